//! Platforms and device ids (`cpu`, `cuda:0`, `rocm:1`, ...).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::HardwareError;

/// A kind of compute hardware hfms knows how to detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Cpu,
    Cuda,
    Rocm,
    Metal,
    #[serde(rename = "openvino")]
    OpenVino,
    Qnn,
}

impl Platform {
    /// Every platform, in the order reports list them (CPU first).
    pub const ALL: [Platform; 6] = [
        Platform::Cpu,
        Platform::Cuda,
        Platform::Rocm,
        Platform::Metal,
        Platform::OpenVino,
        Platform::Qnn,
    ];

    /// The order placement tries platforms in: dedicated accelerators first,
    /// the CPU last because it always exists and is the slowest.
    pub const PREFERENCE: [Platform; 6] = [
        Platform::Cuda,
        Platform::Rocm,
        Platform::Metal,
        Platform::OpenVino,
        Platform::Qnn,
        Platform::Cpu,
    ];

    /// The lowercase name used in device ids, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Cpu => "cpu",
            Platform::Cuda => "cuda",
            Platform::Rocm => "rocm",
            Platform::Metal => "metal",
            Platform::OpenVino => "openvino",
            Platform::Qnn => "qnn",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment (`{:<9}`) apply, as for `str`.
        f.pad(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = HardwareError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|platform| platform.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| HardwareError::UnknownPlatform(s.to_string()))
    }
}

/// One device: a platform plus an index within it.
///
/// Written as `cpu` (the CPU is one device; `cpu:0` is accepted when parsing),
/// `cuda:0`, `rocm:1`, `metal:0`, `openvino:0`, `qnn:0`. Serialized as that
/// string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    pub platform: Platform,
    pub index: u32,
}

impl DeviceId {
    pub const CPU: DeviceId = DeviceId {
        platform: Platform::Cpu,
        index: 0,
    };

    pub fn new(platform: Platform, index: u32) -> Self {
        DeviceId { platform, index }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The CPU is always a single device, so its index carries no meaning.
        if self.platform == Platform::Cpu && self.index == 0 {
            f.write_str("cpu")
        } else {
            write!(f, "{}:{}", self.platform, self.index)
        }
    }
}

impl FromStr for DeviceId {
    type Err = HardwareError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| HardwareError::InvalidDeviceId {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = s.trim();
        let (platform_text, index_text) = match trimmed.split_once(':') {
            Some((platform, index)) => (platform, Some(index)),
            None => (trimmed, None),
        };
        let platform: Platform = platform_text
            .parse()
            .map_err(|_| invalid("unknown platform (expected cpu, cuda, rocm, metal, openvino or qnn)"))?;
        let index = match index_text {
            Some(text) => text
                .parse::<u32>()
                .map_err(|_| invalid("the index after `:` must be a non-negative integer"))?,
            None if platform == Platform::Cpu => 0,
            None => return Err(invalid("needs an index, e.g. `cuda:0`")),
        };
        if platform == Platform::Cpu && index != 0 {
            return Err(invalid("there is only one CPU device, `cpu`"));
        }
        Ok(DeviceId { platform, index })
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_round_trip_through_text() {
        for text in ["cpu", "cuda:0", "rocm:1", "metal:0", "openvino:0", "qnn:0"] {
            let id: DeviceId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
        }
        assert_eq!("cpu:0".parse::<DeviceId>().unwrap(), DeviceId::CPU);
        assert_eq!("CUDA:3".parse::<DeviceId>().unwrap(), DeviceId::new(Platform::Cuda, 3));
    }

    #[test]
    fn bad_device_ids_say_why() {
        let cases = [
            ("cuda", "needs an index"),
            ("tpu:0", "unknown platform"),
            ("cuda:-1", "non-negative integer"),
            ("cuda:x", "non-negative integer"),
            ("cpu:1", "only one CPU"),
        ];
        for (text, expected) in cases {
            let message = text.parse::<DeviceId>().unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains(text), "{text}: {message}");
        }
    }

    #[test]
    fn device_ids_serialize_as_strings() {
        let id = DeviceId::new(Platform::OpenVino, 2);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"openvino:2\"");
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        assert_eq!(serde_json::to_string(&Platform::OpenVino).unwrap(), "\"openvino\"");
    }
}
