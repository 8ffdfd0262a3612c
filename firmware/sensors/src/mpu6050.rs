//! InvenSense MPU-6050 (accelerometer + gyroscope, 6 channels) over I2C, embedded-hal 1.0.
//!
//! One sample is one burst read of the 14 data registers from `ACCEL_XOUT_H` (0x3B):
//! accel x, y, z, temperature, gyro x, y, z, each a big-endian i16. The driver returns the
//! six motion channels in that order (accel then gyro), raw ([`Sensor<i16, 6>`]) or
//! scaled to g and degrees per second ([`Sensor<f32, 6>`]) according to the configured
//! full-scale ranges.

use crate::Sensor;
use embedded_hal::i2c::I2c;

/// I2C address with the AD0 pin low.
pub const ADDRESS_AD0_LOW: u8 = 0x68;
/// I2C address with the AD0 pin high.
pub const ADDRESS_AD0_HIGH: u8 = 0x69;

/// Register addresses used by the driver.
pub mod reg {
    /// Sample-rate divider.
    pub const SMPLRT_DIV: u8 = 0x19;
    /// Digital low-pass filter configuration.
    pub const CONFIG: u8 = 0x1A;
    /// Gyroscope full-scale range (bits 4:3).
    pub const GYRO_CONFIG: u8 = 0x1B;
    /// Accelerometer full-scale range (bits 4:3).
    pub const ACCEL_CONFIG: u8 = 0x1C;
    /// First of the 14 data registers.
    pub const ACCEL_XOUT_H: u8 = 0x3B;
    /// Power management 1 (sleep bit, clock source).
    pub const PWR_MGMT_1: u8 = 0x6B;
    /// Identity register; reads 0x68 on a genuine part.
    pub const WHO_AM_I: u8 = 0x75;
}

/// The value `WHO_AM_I` holds on an MPU-6050.
pub const WHO_AM_I_VALUE: u8 = 0x68;

/// Accelerometer full-scale range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelRange {
    /// ±2 g, 16384 LSB/g.
    G2 = 0,
    /// ±4 g, 8192 LSB/g.
    G4 = 1,
    /// ±8 g, 4096 LSB/g.
    G8 = 2,
    /// ±16 g, 2048 LSB/g.
    G16 = 3,
}

impl AccelRange {
    /// Raw counts per g.
    pub const fn lsb_per_g(self) -> f32 {
        match self {
            AccelRange::G2 => 16384.0,
            AccelRange::G4 => 8192.0,
            AccelRange::G8 => 4096.0,
            AccelRange::G16 => 2048.0,
        }
    }
}

/// Gyroscope full-scale range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GyroRange {
    /// ±250 °/s, 131 LSB per °/s.
    Dps250 = 0,
    /// ±500 °/s, 65.5 LSB per °/s.
    Dps500 = 1,
    /// ±1000 °/s, 32.8 LSB per °/s.
    Dps1000 = 2,
    /// ±2000 °/s, 16.4 LSB per °/s.
    Dps2000 = 3,
}

impl GyroRange {
    /// Raw counts per degree per second.
    pub const fn lsb_per_dps(self) -> f32 {
        match self {
            GyroRange::Dps250 => 131.0,
            GyroRange::Dps500 => 65.5,
            GyroRange::Dps1000 => 32.8,
            GyroRange::Dps2000 => 16.4,
        }
    }
}

/// Settings written by [`Mpu6050::init`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Accelerometer range.
    pub accel: AccelRange,
    /// Gyroscope range.
    pub gyro: GyroRange,
    /// Digital low-pass filter setting, 0..=6 (`CONFIG.DLPF_CFG`).
    pub dlpf: u8,
    /// Sample rate = gyro output rate / (1 + divider).
    pub sample_rate_divider: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            accel: AccelRange::G2,
            gyro: GyroRange::Dps250,
            dlpf: 3,
            sample_rate_divider: 9,
        }
    }
}

/// Driver errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C bus reported an error.
    I2c(E),
    /// `WHO_AM_I` did not read [`WHO_AM_I_VALUE`]: not an MPU-6050 at this address.
    WrongDevice(u8),
    /// A configuration value out of range (`dlpf` above 6).
    BadConfig,
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::I2c(e)
    }
}

/// An MPU-6050 on an I2C bus.
pub struct Mpu6050<I> {
    i2c: I,
    address: u8,
    config: Config,
}

impl<I: I2c> Mpu6050<I> {
    /// Checks the device's identity, wakes it (PLL clock from the X gyro) and writes the
    /// configuration.
    pub fn init(mut i2c: I, address: u8, config: Config) -> Result<Self, Error<I::Error>> {
        if config.dlpf > 6 {
            return Err(Error::BadConfig);
        }
        let mut id = [0u8];
        i2c.write_read(address, &[reg::WHO_AM_I], &mut id)?;
        if id[0] != WHO_AM_I_VALUE {
            return Err(Error::WrongDevice(id[0]));
        }
        i2c.write(address, &[reg::PWR_MGMT_1, 0x01])?;
        i2c.write(address, &[reg::SMPLRT_DIV, config.sample_rate_divider])?;
        i2c.write(address, &[reg::CONFIG, config.dlpf])?;
        i2c.write(address, &[reg::GYRO_CONFIG, (config.gyro as u8) << 3])?;
        i2c.write(address, &[reg::ACCEL_CONFIG, (config.accel as u8) << 3])?;
        Ok(Mpu6050 {
            i2c,
            address,
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Reads the six motion channels raw: accel x, y, z, gyro x, y, z.
    pub fn read_raw(&mut self) -> Result<[i16; 6], Error<I::Error>> {
        let mut b = [0u8; 14];
        self.i2c
            .write_read(self.address, &[reg::ACCEL_XOUT_H], &mut b)?;
        let w = |i: usize| i16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
        // Word 3 is the temperature.
        Ok([w(0), w(1), w(2), w(4), w(5), w(6)])
    }

    /// Converts a raw sample to g (accel) and degrees per second (gyro).
    pub fn scale(&self, raw: [i16; 6]) -> [f32; 6] {
        let a = self.config.accel.lsb_per_g();
        let g = self.config.gyro.lsb_per_dps();
        let mut out = [0f32; 6];
        for (k, (o, r)) in out.iter_mut().zip(raw).enumerate() {
            *o = r as f32 / if k < 3 { a } else { g };
        }
        out
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

impl<I: I2c> Sensor<i16, 6> for Mpu6050<I> {
    type Error = Error<I::Error>;

    fn sample(&mut self) -> Result<Option<[i16; 6]>, Self::Error> {
        self.read_raw().map(Some)
    }
}

impl<I: I2c> Sensor<f32, 6> for Mpu6050<I> {
    type Error = Error<I::Error>;

    fn sample(&mut self) -> Result<Option<[f32; 6]>, Self::Error> {
        let raw = self.read_raw()?;
        Ok(Some(self.scale(raw)))
    }
}
