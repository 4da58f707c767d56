//! Generation: sampling, stop sequences, and the scheduler that steps all
//! running sequences of a model together.
pub mod grammar;
pub mod prefix;
pub mod sampling;
pub mod scheduler;
pub mod stop;

pub use sampling::SamplingParams;
pub use scheduler::{
    Constraint, FinishReason, GenEvent, GenUsage, GenerateRequest, Generator, PromptToken, SchedulerConfig,
    TokenLogprob, TopLogprob,
};
