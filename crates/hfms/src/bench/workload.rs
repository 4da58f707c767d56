//! Deterministic inputs: chat prompts from a fixed word list and short
//! distinct sentences for embeddings. The same numbers give the same text on
//! every machine and every run, so peers can be fed exactly what hfms gets
//! (`hfms bench --print-sentences N`).

/// Common English words; with a leading space each is one token in the
/// usual BPE vocabularies, so a prompt of N words is about N tokens.
const WORDS: &[&str] = &[
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "big",
    "high",
    "different",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
    "open",
    "green",
    "river",
    "light",
    "music",
];

/// A 64-bit mix (splitmix64): a well-spread stream from any seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn words(seed: u64, n: usize, out: &mut Vec<&'static str>) {
    let mut state = seed;
    for _ in 0..n {
        out.push(WORDS[(splitmix64(&mut state) % WORDS.len() as u64) as usize]);
    }
}

/// The user message of chat request number `seq` (numbered across the
/// whole run, so no two requests of a run share more than the shared
/// prefix): `shared_prefix` words common to every request, then a marker
/// with the request's number and about `prompt_tokens` words of its own.
pub fn chat_prompt(seq: u64, prompt_tokens: usize, shared_prefix: usize) -> String {
    let mut w = Vec::with_capacity(shared_prefix + prompt_tokens);
    words(0x5EED_0000_0000_0000, shared_prefix, &mut w);
    let mut text = w.join(" ");
    if !text.is_empty() {
        text.push(' ');
    }
    // The number itself costs a few tokens: the words make up the rest.
    let marker = format!("Text {seq}:");
    text.push_str(&marker);
    let own = prompt_tokens.saturating_sub(marker.len().div_ceil(2)).max(1);
    w.clear();
    words(seq.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1), own, &mut w);
    for word in w {
        text.push(' ');
        text.push_str(word);
    }
    text
}

const SUBJECTS: &[&str] = &[
    "The old farmer",
    "A young doctor",
    "My neighbour",
    "The tired student",
    "Our new teacher",
    "The quiet engineer",
    "A local baker",
    "The city council",
    "Her younger brother",
    "The museum guide",
    "A travelling musician",
    "The night nurse",
    "His grandmother",
    "The ship's captain",
    "A careful driver",
    "The small team",
];

const VERBS: &[&str] = &[
    "repaired",
    "painted",
    "described",
    "visited",
    "photographed",
    "cleaned",
    "measured",
    "designed",
    "ordered",
    "borrowed",
    "returned",
    "moved",
    "sold",
    "found",
    "checked",
    "carried",
];

const OBJECTS: &[&str] = &[
    "the wooden fence",
    "a broken bicycle",
    "the blue kitchen",
    "an ancient map",
    "the garden shed",
    "a heavy suitcase",
    "the village library",
    "a new telescope",
    "the stone bridge",
    "an empty warehouse",
    "the red tractor",
    "a quiet cottage",
    "the science lab",
    "a wedding cake",
    "the harbour crane",
    "a mountain cabin",
];

const WHEN: &[&str] = &[
    "before sunrise.",
    "after the storm.",
    "on a rainy Tuesday.",
    "during the festival.",
    "late last night.",
    "in early spring.",
    "before the guests arrived.",
    "while everyone slept.",
];

/// How many distinct sentences [`sentence`] produces before repeating.
pub const SENTENCES: usize = 16 * 16 * 16 * 8;

/// Short sentence number `i` (distinct for `i < SENTENCES`, then cycling).
pub fn sentence(i: usize) -> String {
    let i = i % SENTENCES;
    let s = SUBJECTS[i % 16];
    let v = VERBS[(i / 16) % 16];
    let o = OBJECTS[(i / 256) % 16];
    let w = WHEN[(i / 4096) % 8];
    format!("{s} {v} {o} {w}")
}

/// A short chat message for swap mode's requests.
pub fn short_prompt(seq: u64) -> String {
    format!("In one short sentence: {}", sentence(seq as usize))
}
