//! `--device auto|cpu|cuda:N`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use super::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when this build has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device (auto, cpu, cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if cfg!(feature = "cuda") {
                    match Device::new_cuda(0) {
                        Ok(d) => return Ok(d),
                        Err(e) => tracing::warn!(error = %e, "no usable CUDA device, falling back to CPU"),
                    }
                }
                Ok(Device::Cpu)
            }
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(ModelError::Device(format!(
                        "cuda:{n} asked for, but this binary was built without the `cuda` feature (cargo build --features cuda)"
                    )));
                }
                Device::new_cuda(n).map_err(|e| ModelError::Device(format!("cuda:{n}: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("auto".parse::<DeviceSpec>(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_opens_and_auto_falls_back() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
            assert!(DeviceSpec::Cuda(0).open().unwrap_err().to_string().contains("cuda"));
        }
    }
}
