//! The crate's single error type.

use std::path::PathBuf;

use crate::platform::DeviceId;
use crate::report::format_bytes;

/// Everything that can go wrong in detection, placement and load tracking.
///
/// Detection never returns these to the caller: a probe turns its error into
/// the platform's `reason` string (via `Display`), so the messages are written
/// to be read by an operator.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("invalid device id `{input}`: {reason}")]
    InvalidDeviceId { input: String, reason: String },

    #[error("unknown platform `{0}` (expected cpu, cuda, rocm, metal, openvino or qnn)")]
    UnknownPlatform(String),

    #[error("pinned device {pin} does not exist (devices: {available})")]
    PinnedDeviceMissing { pin: DeviceId, available: String },

    #[error("cannot place on pinned device {pin}: {reason}")]
    PinnedDeviceUnusable { pin: DeviceId, reason: String },

    #[error("{}", nothing_fits_message(*.needed_bytes, *.largest_free_bytes, .largest_free_device.as_ref(), .skipped))]
    NothingFits {
        needed_bytes: u64,
        largest_free_bytes: u64,
        largest_free_device: Option<DeviceId>,
        skipped: Vec<String>,
    },

    #[error("cannot reserve {} on {device}: only {} free", format_bytes(*.requested_bytes), format_bytes(*.available_bytes))]
    ReservationDoesNotFit {
        device: DeviceId,
        requested_bytes: u64,
        available_bytes: u64,
    },

    #[error("releasing {released_bytes} bytes on {device}, but only {reserved_bytes} bytes are reserved there")]
    ReleaseExceedsReservation {
        device: DeviceId,
        released_bytes: u64,
        reserved_bytes: u64,
    },

    #[error("{library} not found in: {searched}")]
    LibraryNotFound { library: String, searched: String },

    // libloading's message already carries the full path, so only the file
    // name goes in front of it.
    #[error("{} could not be loaded: {source}", path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned()))]
    LibraryLoad { path: PathBuf, source: libloading::Error },

    #[error("{} has no symbol {symbol}: {source}", path.display())]
    MissingSymbol {
        path: PathBuf,
        symbol: String,
        source: libloading::Error,
    },

    #[error("{function} failed: {message}")]
    ForeignCall { function: &'static str, message: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("probe timed out after {timeout_ms} ms")]
    ProbeTimedOut { timeout_ms: u128 },

    #[error("probe panicked: {message}")]
    ProbePanicked { message: String },

    #[error("cannot start probe thread: {0}")]
    ProbeThread(std::io::Error),
}

fn nothing_fits_message(
    needed_bytes: u64,
    largest_free_bytes: u64,
    largest_free_device: Option<&DeviceId>,
    skipped: &[String],
) -> String {
    let mut message = format!(
        "no device can hold the model: it needs {} ({needed_bytes} bytes), the most free on any eligible device is {} ({largest_free_bytes} bytes",
        format_bytes(needed_bytes),
        format_bytes(largest_free_bytes),
    );
    if let Some(device) = largest_free_device {
        message.push_str(&format!(" on {device}"));
    }
    message.push(')');
    if !skipped.is_empty() {
        message.push_str("; skipped: ");
        message.push_str(&skipped.join("; "));
    }
    message
}
