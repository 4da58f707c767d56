//! Prints what detection finds, as a table and as JSON, and where a 4.75 GiB
//! model would be placed.
//!
//! `cargo run -p hfms-hardware --example hardware` probes this machine;
//! `... --example hardware -- <root>` probes a recorded tree instead
//! (e.g. `crates/hardware/tests/fixtures/amd-mi210-rx7900`).

use hfms_hardware::{
    ModelFootprint, PlacementRequest, Platform, ProbeRoots, detect, format_bytes, place, render_table,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let roots = match std::env::args_os().nth(1) {
        Some(root) => ProbeRoots::under(root),
        None => ProbeRoots::host(),
    };
    let report = detect(&roots);
    println!("{}", render_table(&report));
    println!("{}", serde_json::to_string_pretty(&report)?);

    let footprint = ModelFootprint {
        weights_bytes: 4 << 30,
        kv_cache_bytes: 512 << 20,
        workspace_bytes: 256 << 20,
    };
    let request = PlacementRequest::new(footprint, Platform::ALL);
    match place(&request, &report.device_states()) {
        Ok(placement) => {
            println!(
                "\na {} model would go to {}",
                format_bytes(placement.needed_bytes),
                placement.device
            );
            for reason in placement.skipped {
                println!("  skipped {reason}");
            }
        }
        Err(error) => println!("\nno placement: {error}"),
    }
    Ok(())
}
