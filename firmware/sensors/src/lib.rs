//! Sample input and output for recur's firmware.
//!
//! - [`Sensor`]: one sample of `N` channels per call, the one interface the firmware's
//!   streaming loop reads from, whether the samples come from a host file over semihosting
//!   (QEMU) or from a real sensor.
//! - [`stream`]: the `.rcs` sample-stream file format (a 16-byte header, then
//!   little-endian samples) shared by the firmware, the host tests and, later, `recur flash`.
//! - [`mpu6050`]: a driver for the InvenSense MPU-6050 accelerometer + gyroscope written
//!   against `embedded_hal::i2c::I2c`, so it runs on any HAL.
//!
//! `#![no_std]`, no allocation, nothing panics on bad input: every fallible step returns
//! an error value.
#![no_std]
#![deny(missing_docs)]

pub mod mpu6050;
pub mod stream;

/// A source of samples: each call yields one sample of `N` channels of type `T`.
///
/// `Ok(None)` means the stream has ended (a file source at its end); a live sensor never
/// ends and always returns `Ok(Some(..))` or an error.
pub trait Sensor<T: Copy, const N: usize> {
    /// Why a sample could not be read.
    type Error;

    /// Reads the next sample.
    fn sample(&mut self) -> Result<Option<[T; N]>, Self::Error>;
}
