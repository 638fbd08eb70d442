//! Picking the candle device from `encoder.device`, with a clear error when the binary was
//! built without the requested accelerator.

use super::ModelError;
use crate::config::DeviceChoice;
use candle_core::Device;

pub fn select(choice: DeviceChoice) -> Result<Device, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device(
                    "encoder.device is cuda, but this semroute was built without CUDA; rebuild with `cargo build --release --features cuda` or set encoder.device to cpu".into(),
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| ModelError::Device(format!("cannot open CUDA device {ordinal}: {e}")))
        }
        DeviceChoice::Metal => {
            if !candle_core::utils::metal_is_available() {
                return Err(ModelError::Device(
                    "encoder.device is metal, but this semroute was built without Metal; rebuild with `cargo build --release --features metal` or set encoder.device to cpu".into(),
                ));
            }
            Device::new_metal(0)
                .map_err(|e| ModelError::Device(format!("cannot open the Metal device: {e}")))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available()
                && let Ok(device) = Device::new_cuda(0)
            {
                return Ok(device);
            }
            if candle_core::utils::metal_is_available()
                && let Ok(device) = Device::new_metal(0)
            {
                return Ok(device);
            }
            Ok(Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_always_work_on_a_cpu_build() {
        assert!(select(DeviceChoice::Cpu).is_ok_and(|d| d.is_cpu()));
        assert!(select(DeviceChoice::Auto).is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_cpu_build_says_how_to_rebuild() {
        match select(DeviceChoice::Cuda(0)) {
            Err(err) => assert!(err.to_string().contains("--features cuda"), "{err}"),
            Ok(_) => panic!("a CPU build opened a CUDA device"),
        }
    }
}
