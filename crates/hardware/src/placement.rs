//! Placement: which device a model should load on. Pure logic over a table
//! of device states; no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::HardwareError;
use crate::platform::{DeviceId, Platform};
use crate::report::{HardwareReport, format_bytes};

/// `place` reports this; it is the crate's single error type.
pub type PlacementError = HardwareError;

/// A device as placement sees it: capacity from detection, load from
/// [`crate::DeviceLoad`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub id: DeviceId,
    pub total_bytes: u64,
    /// Free memory when detection ran, before this process reserved any.
    pub free_bytes: u64,
    pub build_supported: bool,
    pub resident_models: usize,
    /// Memory this process has reserved for models on the device since.
    pub reserved_bytes: u64,
    pub in_flight: usize,
}

impl DeviceState {
    /// What is still free for a new model.
    pub fn available_bytes(&self) -> u64 {
        self.free_bytes.saturating_sub(self.reserved_bytes)
    }
}

/// Memory a model needs on its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFootprint {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub workspace_bytes: u64,
}

impl ModelFootprint {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_add(self.kv_cache_bytes)
            .saturating_add(self.workspace_bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub footprint: ModelFootprint,
    /// Platforms the model's skill has kernels for.
    pub supported_platforms: BTreeSet<Platform>,
    /// Use exactly this device or fail.
    pub pin: Option<DeviceId>,
    /// Platforms the operator ruled out for this model.
    pub forbidden_platforms: BTreeSet<Platform>,
}

impl PlacementRequest {
    pub fn new(footprint: ModelFootprint, supported_platforms: impl IntoIterator<Item = Platform>) -> Self {
        PlacementRequest {
            footprint,
            supported_platforms: supported_platforms.into_iter().collect(),
            pin: None,
            forbidden_platforms: BTreeSet::new(),
        }
    }

    pub fn pinned(mut self, device: DeviceId) -> Self {
        self.pin = Some(device);
        self
    }

    pub fn forbid(mut self, platform: Platform) -> Self {
        self.forbidden_platforms.insert(platform);
        self
    }
}

/// Where a model goes, and why better-ranked devices were passed over (for
/// the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub device: DeviceId,
    pub needed_bytes: u64,
    /// Free memory on the chosen device before this model.
    pub available_bytes: u64,
    /// One line per skipped device or platform, in preference order.
    pub skipped: Vec<String>,
}

/// Why `device` cannot take the model, or `None` if it can.
fn rejection(request: &PlacementRequest, device: &DeviceState) -> Option<String> {
    let platform = device.id.platform;
    let needed = request.footprint.total_bytes();
    if request.forbidden_platforms.contains(&platform) {
        return Some(format!("platform {platform} is forbidden for this model"));
    }
    if !request.supported_platforms.contains(&platform) {
        return Some(format!("the model's skill does not support {platform}"));
    }
    if !device.build_supported {
        return Some(format!("this build cannot run models on {platform}"));
    }
    let available = device.available_bytes();
    if available < needed {
        return Some(format!(
            "needs {} ({needed} bytes), only {} ({available} bytes) free ({} free minus {} reserved)",
            format_bytes(needed),
            format_bytes(available),
            format_bytes(device.free_bytes),
            format_bytes(device.reserved_bytes),
        ));
    }
    None
}

/// Orders devices that fit by load: fewest in-flight requests, then most free
/// memory, then fewest resident models, then lowest index (stable choice).
fn load_key(device: &DeviceState) -> (usize, std::cmp::Reverse<u64>, usize, u32) {
    (
        device.in_flight,
        std::cmp::Reverse(device.available_bytes()),
        device.resident_models,
        device.id.index,
    )
}

/// Chooses a device for a model.
///
/// Platforms are tried in [`Platform::PREFERENCE`] order (cuda, rocm, metal,
/// openvino, qnn, cpu); a platform is skipped when it is forbidden, the
/// skill does not support it, this build cannot run it, or none of its
/// devices has `footprint.total_bytes()` free after reservations. Among the
/// devices of the first platform that fits, the least loaded wins. A pin
/// bypasses the ranking but not the checks. If nothing fits, the error
/// carries the numbers and every reason.
pub fn place(request: &PlacementRequest, devices: &[DeviceState]) -> Result<Placement, PlacementError> {
    let needed_bytes = request.footprint.total_bytes();

    if let Some(pin) = request.pin {
        let device =
            devices
                .iter()
                .find(|device| device.id == pin)
                .ok_or_else(|| HardwareError::PinnedDeviceMissing {
                    pin,
                    available: if devices.is_empty() {
                        "none".to_string()
                    } else {
                        devices
                            .iter()
                            .map(|device| device.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })?;
        if let Some(reason) = rejection(request, device) {
            return Err(HardwareError::PinnedDeviceUnusable { pin, reason });
        }
        return Ok(Placement {
            device: pin,
            needed_bytes,
            available_bytes: device.available_bytes(),
            skipped: Vec::new(),
        });
    }

    let mut skipped = Vec::new();
    // For the error: the roomiest device that was otherwise eligible.
    let mut largest_free: Option<(u64, DeviceId)> = None;
    for platform in Platform::PREFERENCE {
        let mut on_platform: Vec<&DeviceState> =
            devices.iter().filter(|device| device.id.platform == platform).collect();
        if on_platform.is_empty() {
            continue;
        }
        on_platform.sort_by_key(|device| device.id.index);
        let ids = || {
            on_platform
                .iter()
                .map(|device| device.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Whole-platform reasons are logged once, not per device.
        if request.forbidden_platforms.contains(&platform) {
            skipped.push(format!("{}: platform {platform} is forbidden for this model", ids()));
            continue;
        }
        if !request.supported_platforms.contains(&platform) {
            skipped.push(format!("{}: the model's skill does not support {platform}", ids()));
            continue;
        }
        if on_platform.iter().all(|device| !device.build_supported) {
            skipped.push(format!("{}: this build cannot run models on {platform}", ids()));
            continue;
        }

        let mut fitting = Vec::new();
        for device in &on_platform {
            match rejection(request, device) {
                Some(reason) => {
                    if device.build_supported && largest_free.is_none_or(|(bytes, _)| device.available_bytes() > bytes)
                    {
                        largest_free = Some((device.available_bytes(), device.id));
                    }
                    skipped.push(format!("{}: {reason}", device.id));
                }
                None => fitting.push(*device),
            }
        }
        let Some(chosen) = fitting.iter().min_by_key(|device| load_key(device)).copied() else {
            continue;
        };
        for other in fitting.iter().filter(|device| device.id != chosen.id) {
            skipped.push(format!(
                "{}: fits, but {} is less loaded ({} in flight, {} free, {} resident vs {} in flight, {} free, {} resident)",
                other.id,
                chosen.id,
                chosen.in_flight,
                format_bytes(chosen.available_bytes()),
                chosen.resident_models,
                other.in_flight,
                format_bytes(other.available_bytes()),
                other.resident_models,
            ));
        }
        return Ok(Placement {
            device: chosen.id,
            needed_bytes,
            available_bytes: chosen.available_bytes(),
            skipped,
        });
    }

    let (largest_free_bytes, largest_free_device) = match largest_free {
        Some((bytes, device)) => (bytes, Some(device)),
        None => (0, None),
    };
    Err(HardwareError::NothingFits {
        needed_bytes,
        largest_free_bytes,
        largest_free_device,
        skipped,
    })
}

impl HardwareReport {
    /// Placement's view of the detected devices, with no load yet: present
    /// platforms only; `build_supported` from the platform's build support.
    ///
    /// Devices with unknown memory: those that share host memory (Metal on
    /// Apple silicon, OpenVINO, QNN) get the host's effective available
    /// memory; dedicated GPUs whose memory could not be read (NVML missing)
    /// get 0, so placement skips them with a reason instead of loading onto
    /// memory it cannot see.
    pub fn device_states(&self) -> Vec<DeviceState> {
        let host_total = self.cpu.as_ref().and_then(|cpu| cpu.effective_memory_bytes);
        let host_available = self.cpu.as_ref().and_then(|cpu| cpu.effective_available_bytes);
        let mut states = Vec::new();
        for platform in self.platforms.iter().filter(|platform| platform.present) {
            let shares_host_memory = matches!(
                platform.platform,
                Platform::Cpu | Platform::Metal | Platform::OpenVino | Platform::Qnn
            );
            for device in &platform.devices {
                let (fallback_total, fallback_free) = if shares_host_memory {
                    (host_total, host_available.or(device.total_bytes))
                } else {
                    (None, None)
                };
                let total_bytes = device.total_bytes.or(fallback_total).unwrap_or(0);
                let free_bytes = device.free_bytes.or(fallback_free).unwrap_or(0).min(
                    // Free can never exceed total when total is known.
                    if total_bytes > 0 { total_bytes } else { u64::MAX },
                );
                states.push(DeviceState {
                    id: device.id,
                    total_bytes,
                    free_bytes,
                    build_supported: platform.build_supports,
                    resident_models: 0,
                    reserved_bytes: 0,
                    in_flight: 0,
                });
            }
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn device(id: &str, free_gib: u64) -> DeviceState {
        DeviceState {
            id: id.parse().unwrap(),
            total_bytes: free_gib * GIB,
            free_bytes: free_gib * GIB,
            build_supported: true,
            resident_models: 0,
            reserved_bytes: 0,
            in_flight: 0,
        }
    }

    fn model(gib: u64) -> ModelFootprint {
        ModelFootprint {
            weights_bytes: gib * GIB - 2 * (GIB / 8),
            kv_cache_bytes: GIB / 8,
            workspace_bytes: GIB / 8,
        }
    }

    fn any_platform(gib: u64) -> PlacementRequest {
        PlacementRequest::new(model(gib), Platform::ALL)
    }

    #[test]
    fn footprint_total_is_the_sum() {
        assert_eq!(model(4).total_bytes(), 4 * GIB);
    }

    #[test]
    fn free_gpu_is_preferred_over_cpu() {
        let devices = [device("cpu", 64), device("cuda:0", 80)];
        let placement = place(&any_platform(10), &devices).unwrap();
        assert_eq!(placement.device.to_string(), "cuda:0");
        assert!(placement.skipped.is_empty());
        assert_eq!(placement.needed_bytes, 10 * GIB);
    }

    #[test]
    fn full_gpu_falls_back_to_cpu_with_reason() {
        let mut gpu = device("cuda:0", 24);
        gpu.reserved_bytes = 20 * GIB;
        let devices = [gpu, device("cpu", 64)];
        let placement = place(&any_platform(8), &devices).unwrap();
        assert_eq!(placement.device, DeviceId::CPU);
        assert_eq!(placement.skipped.len(), 1);
        let reason = &placement.skipped[0];
        assert!(reason.starts_with("cuda:0: needs 8.00 GiB"), "{reason}");
        assert!(reason.contains("only 4.00 GiB"), "{reason}");
        assert!(reason.contains("20.00 GiB reserved"), "{reason}");
    }

    #[test]
    fn missing_pinned_device_is_an_error_naming_it() {
        let devices = [device("cpu", 64), device("cuda:0", 80)];
        let request = any_platform(1).pinned("cuda:3".parse().unwrap());
        let error = place(&request, &devices).unwrap_err();
        assert!(matches!(error, HardwareError::PinnedDeviceMissing { .. }));
        let message = error.to_string();
        assert!(message.contains("cuda:3"), "{message}");
        assert!(message.contains("cpu, cuda:0"), "{message}");
    }

    #[test]
    fn pin_to_existing_device_that_fits_is_chosen_even_if_not_preferred() {
        let devices = [device("cuda:0", 80), device("cuda:1", 80), device("cpu", 64)];
        let placement = place(&any_platform(4).pinned("cuda:1".parse().unwrap()), &devices).unwrap();
        assert_eq!(placement.device.to_string(), "cuda:1");
        let placement = place(&any_platform(4).pinned(DeviceId::CPU), &devices).unwrap();
        assert_eq!(placement.device, DeviceId::CPU);
    }

    #[test]
    fn pin_that_cannot_be_met_says_why() {
        let mut unsupported = device("rocm:0", 64);
        unsupported.build_supported = false;
        let devices = [device("cuda:0", 8), unsupported, device("cpu", 64)];
        let cases = [
            (any_platform(16).pinned("cuda:0".parse().unwrap()), "needs 16.00 GiB"),
            (
                any_platform(1).pinned("rocm:0".parse().unwrap()),
                "this build cannot run models on rocm",
            ),
            (
                PlacementRequest::new(model(1), [Platform::Cpu]).pinned("cuda:0".parse().unwrap()),
                "skill does not support cuda",
            ),
            (
                any_platform(1).forbid(Platform::Cuda).pinned("cuda:0".parse().unwrap()),
                "cuda is forbidden",
            ),
        ];
        for (request, expected) in cases {
            let error = place(&request, &devices).unwrap_err();
            assert!(matches!(error, HardwareError::PinnedDeviceUnusable { .. }));
            let message = error.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("pinned device"), "{message}");
        }
    }

    #[test]
    fn less_loaded_gpu_wins_a_tie() {
        let mut busy = device("cuda:0", 80);
        busy.in_flight = 3;
        let mut idle = device("cuda:1", 40);
        idle.in_flight = 1;
        let devices = [busy, idle, device("cpu", 64)];
        let placement = place(&any_platform(10), &devices).unwrap();
        assert_eq!(placement.device.to_string(), "cuda:1");
        assert!(placement.skipped[0].starts_with("cuda:0: fits, but cuda:1 is less loaded"));
    }

    #[test]
    fn equal_in_flight_prefers_more_free_memory_then_fewer_models() {
        let mut small = device("cuda:0", 24);
        small.resident_models = 0;
        let big = device("cuda:1", 80);
        let placement = place(&any_platform(4), &[small, big]).unwrap();
        assert_eq!(placement.device.to_string(), "cuda:1");

        let mut crowded = device("cuda:0", 40);
        crowded.resident_models = 3;
        let quiet = device("cuda:1", 40);
        let placement = place(&any_platform(4), &[crowded, quiet]).unwrap();
        assert_eq!(placement.device.to_string(), "cuda:1");
    }

    #[test]
    fn platform_not_supported_by_build_is_skipped() {
        let mut gpu = device("rocm:0", 64);
        gpu.build_supported = false;
        let devices = [gpu, device("cpu", 32)];
        let placement = place(&any_platform(4), &devices).unwrap();
        assert_eq!(placement.device, DeviceId::CPU);
        assert_eq!(placement.skipped, ["rocm:0: this build cannot run models on rocm"]);
    }

    #[test]
    fn cpu_only_skill_goes_to_cpu_even_with_free_gpus() {
        let devices = [device("cuda:0", 80), device("cuda:1", 80), device("cpu", 32)];
        let request = PlacementRequest::new(model(4), [Platform::Cpu]);
        let placement = place(&request, &devices).unwrap();
        assert_eq!(placement.device, DeviceId::CPU);
        assert_eq!(
            placement.skipped,
            ["cuda:0, cuda:1: the model's skill does not support cuda"]
        );
    }

    #[test]
    fn forbidden_platform_is_skipped() {
        let devices = [device("cuda:0", 80), device("qnn:0", 16), device("cpu", 32)];
        let request = any_platform(4).forbid(Platform::Cuda);
        let placement = place(&request, &devices).unwrap();
        assert_eq!(placement.device.to_string(), "qnn:0");
        assert_eq!(placement.skipped, ["cuda:0: platform cuda is forbidden for this model"]);
    }

    #[test]
    fn platform_order_is_cuda_rocm_metal_openvino_qnn_cpu() {
        let all = [
            device("cpu", 64),
            device("qnn:0", 64),
            device("openvino:0", 64),
            device("metal:0", 64),
            device("rocm:0", 64),
            device("cuda:0", 64),
        ];
        let mut remaining: Vec<DeviceState> = all.to_vec();
        for expected in ["cuda:0", "rocm:0", "metal:0", "openvino:0", "qnn:0", "cpu"] {
            let placement = place(&any_platform(1), &remaining).unwrap();
            assert_eq!(placement.device.to_string(), expected);
            remaining.retain(|device| device.id != placement.device);
        }
    }

    #[test]
    fn nothing_fits_anywhere_is_an_error_with_numbers() {
        let devices = [device("cuda:0", 24), device("cpu", 16)];
        let error = place(&any_platform(40), &devices).unwrap_err();
        match &error {
            HardwareError::NothingFits {
                needed_bytes,
                largest_free_bytes,
                largest_free_device,
                skipped,
            } => {
                assert_eq!(*needed_bytes, 40 * GIB);
                assert_eq!(*largest_free_bytes, 24 * GIB);
                assert_eq!(largest_free_device.map(|d| d.to_string()).as_deref(), Some("cuda:0"));
                assert_eq!(skipped.len(), 2);
                assert!(skipped[1].starts_with("cpu: needs 40.00 GiB"));
            }
            other => panic!("unexpected error {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains(&format!("{} bytes", 40 * GIB)), "{message}");
        assert!(message.contains(&format!("{} bytes", 16 * GIB)), "{message}");
        assert!(message.contains("40.00 GiB"), "{message}");
    }

    #[test]
    fn no_supported_platform_is_an_error_too() {
        let devices = [device("cuda:0", 24), device("cpu", 16)];
        let request = PlacementRequest::new(model(1), [Platform::Metal]);
        let error = place(&request, &devices).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("does not support cuda"), "{message}");
        assert!(message.contains("does not support cpu"), "{message}");
    }

    #[test]
    fn empty_device_table_is_an_error() {
        assert!(matches!(
            place(&any_platform(1), &[]),
            Err(HardwareError::NothingFits {
                largest_free_device: None,
                ..
            })
        ));
    }
}
