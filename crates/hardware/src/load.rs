//! Load tracking: memory reserved by resident models and requests in flight,
//! per device, shared across threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::HardwareError;
use crate::placement::DeviceState;
use crate::platform::DeviceId;

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    reserved_bytes: u64,
    resident_models: usize,
    in_flight: usize,
}

/// Per-device load, cheap to clone (all clones share the same counters).
///
/// One [`reserve`](Self::reserve) per resident model, undone by one
/// [`release`](Self::release) with the same byte count when the model is
/// unloaded; one [`request_started`](Self::request_started) guard per
/// request being served.
#[derive(Debug, Clone, Default)]
pub struct DeviceLoad {
    counters: Arc<Mutex<BTreeMap<DeviceId, Counters>>>,
}

/// Load on one device, for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLoadSnapshot {
    pub device: DeviceId,
    pub resident_bytes: u64,
    pub resident_models: usize,
    pub in_flight: usize,
}

impl DeviceLoad {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<DeviceId, Counters>> {
        // The map holds plain counters updated in single statements, so a
        // panic elsewhere while the lock was held cannot leave it
        // half-updated; keep using it.
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a model of `bytes` now resident on `device`.
    pub fn reserve(&self, device: DeviceId, bytes: u64) {
        let mut counters = self.lock();
        let entry = counters.entry(device).or_default();
        entry.reserved_bytes = entry.reserved_bytes.saturating_add(bytes);
        entry.resident_models += 1;
    }

    /// Like [`reserve`](Self::reserve), but only if `free_bytes` (the
    /// device's free memory from detection) minus what is already reserved
    /// covers `bytes`. Check and reservation happen under one lock, so two
    /// models loading at once cannot both take the last free memory.
    pub fn try_reserve(&self, device: DeviceId, bytes: u64, free_bytes: u64) -> Result<(), HardwareError> {
        let mut counters = self.lock();
        let entry = counters.entry(device).or_default();
        let available_bytes = free_bytes.saturating_sub(entry.reserved_bytes);
        if available_bytes < bytes {
            return Err(HardwareError::ReservationDoesNotFit {
                device,
                requested_bytes: bytes,
                available_bytes,
            });
        }
        entry.reserved_bytes += bytes;
        entry.resident_models += 1;
        Ok(())
    }

    /// Undoes one [`reserve`](Self::reserve) of `bytes` on `device`.
    ///
    /// Releasing more than is reserved (or releasing on a device with no
    /// resident model) is an accounting bug in the caller: the counters are
    /// clamped at zero and the error says by how much it was off.
    pub fn release(&self, device: DeviceId, bytes: u64) -> Result<(), HardwareError> {
        let mut counters = self.lock();
        let entry = counters.entry(device).or_default();
        let reserved_bytes = entry.reserved_bytes;
        let had_model = entry.resident_models > 0;
        entry.reserved_bytes = reserved_bytes.saturating_sub(bytes);
        entry.resident_models = entry.resident_models.saturating_sub(1);
        if bytes > reserved_bytes || !had_model {
            return Err(HardwareError::ReleaseExceedsReservation {
                device,
                released_bytes: bytes,
                reserved_bytes,
            });
        }
        Ok(())
    }

    /// Counts a request as in flight on `device` until the guard is dropped.
    pub fn request_started(&self, device: DeviceId) -> InFlightGuard {
        self.lock().entry(device).or_default().in_flight += 1;
        InFlightGuard {
            load: self.clone(),
            device,
        }
    }

    /// Current load of every device that has been used, ordered by device.
    pub fn snapshot(&self) -> Vec<DeviceLoadSnapshot> {
        self.lock()
            .iter()
            .map(|(device, counters)| DeviceLoadSnapshot {
                device: *device,
                resident_bytes: counters.reserved_bytes,
                resident_models: counters.resident_models,
                in_flight: counters.in_flight,
            })
            .collect()
    }

    /// Copies the current load into placement's device table.
    pub fn apply(&self, states: &mut [DeviceState]) {
        let counters = self.lock();
        for state in states {
            let load = counters.get(&state.id).copied().unwrap_or_default();
            state.reserved_bytes = load.reserved_bytes;
            state.resident_models = load.resident_models;
            state.in_flight = load.in_flight;
        }
    }
}

/// A request in flight on a device; dropping it ends the request.
#[must_use = "the request only counts as in flight while the guard is alive"]
#[derive(Debug)]
pub struct InFlightGuard {
    load: DeviceLoad,
    device: DeviceId,
}

impl InFlightGuard {
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counters = self.load.lock();
        if let Some(entry) = counters.get_mut(&self.device) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::platform::Platform;

    fn cuda(index: u32) -> DeviceId {
        DeviceId::new(Platform::Cuda, index)
    }

    fn load_of(load: &DeviceLoad, device: DeviceId) -> DeviceLoadSnapshot {
        load.snapshot()
            .into_iter()
            .find(|snapshot| snapshot.device == device)
            .unwrap()
    }

    #[test]
    fn reserve_and_release_track_bytes_and_models() {
        let load = DeviceLoad::new();
        load.reserve(cuda(0), 100);
        load.reserve(cuda(0), 50);
        load.reserve(DeviceId::CPU, 10);
        assert_eq!(
            load.snapshot(),
            [
                DeviceLoadSnapshot {
                    device: DeviceId::CPU,
                    resident_bytes: 10,
                    resident_models: 1,
                    in_flight: 0
                },
                DeviceLoadSnapshot {
                    device: cuda(0),
                    resident_bytes: 150,
                    resident_models: 2,
                    in_flight: 0
                },
            ]
        );
        load.release(cuda(0), 100).unwrap();
        let after = load_of(&load, cuda(0));
        assert_eq!((after.resident_bytes, after.resident_models), (50, 1));
    }

    #[test]
    fn over_release_is_reported_and_clamped() {
        let load = DeviceLoad::new();
        load.reserve(cuda(1), 10);
        let error = load.release(cuda(1), 30).unwrap_err();
        assert!(error.to_string().contains("releasing 30 bytes on cuda:1"));
        let after = load_of(&load, cuda(1));
        assert_eq!((after.resident_bytes, after.resident_models), (0, 0));
        assert!(load.release(cuda(2), 0).is_err());
    }

    #[test]
    fn try_reserve_refuses_what_does_not_fit() {
        let load = DeviceLoad::new();
        load.try_reserve(cuda(0), 60, 100).unwrap();
        let error = load.try_reserve(cuda(0), 60, 100).unwrap_err();
        assert!(matches!(
            error,
            HardwareError::ReservationDoesNotFit {
                available_bytes: 40,
                ..
            }
        ));
        assert_eq!(load_of(&load, cuda(0)).resident_models, 1);
    }

    #[test]
    fn in_flight_guard_decrements_on_drop() {
        let load = DeviceLoad::new();
        let first = load.request_started(cuda(0));
        let second = load.request_started(cuda(0));
        assert_eq!(load_of(&load, cuda(0)).in_flight, 2);
        drop(first);
        assert_eq!(load_of(&load, cuda(0)).in_flight, 1);
        assert_eq!(second.device(), cuda(0));
        drop(second);
        assert_eq!(load_of(&load, cuda(0)).in_flight, 0);
    }

    #[test]
    fn counters_are_consistent_across_threads() {
        let load = DeviceLoad::new();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let load = load.clone();
                thread::spawn(move || {
                    for _ in 0..1000 {
                        let _guard = load.request_started(cuda(0));
                        load.reserve(cuda(0), 3);
                        load.release(cuda(0), 3).unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let after = load_of(&load, cuda(0));
        assert_eq!(
            (after.resident_bytes, after.resident_models, after.in_flight),
            (0, 0, 0)
        );
    }

    #[test]
    fn apply_copies_load_into_device_states() {
        let load = DeviceLoad::new();
        load.reserve(cuda(0), 1 << 30);
        let _guard = load.request_started(cuda(0));
        let mut states = vec![DeviceState {
            id: cuda(0),
            total_bytes: 8 << 30,
            free_bytes: 8 << 30,
            build_supported: true,
            resident_models: 0,
            reserved_bytes: 0,
            in_flight: 0,
        }];
        load.apply(&mut states);
        assert_eq!(states[0].reserved_bytes, 1 << 30);
        assert_eq!(states[0].resident_models, 1);
        assert_eq!(states[0].in_flight, 1);
        assert_eq!(states[0].available_bytes(), 7 << 30);
    }
}
