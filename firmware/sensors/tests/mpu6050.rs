//! The MPU-6050 driver against embedded-hal-mock's I2C bus: every transaction is checked
//! byte for byte, in order.

use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
use recur_sensors::mpu6050::{reg, AccelRange, Config, Error, GyroRange, Mpu6050, ADDRESS_AD0_LOW};
use recur_sensors::Sensor;

const A: u8 = ADDRESS_AD0_LOW;

fn init_transactions(config: Config) -> Vec<Transaction> {
    vec![
        Transaction::write_read(A, vec![reg::WHO_AM_I], vec![0x68]),
        Transaction::write(A, vec![reg::PWR_MGMT_1, 0x01]),
        Transaction::write(A, vec![reg::SMPLRT_DIV, config.sample_rate_divider]),
        Transaction::write(A, vec![reg::CONFIG, config.dlpf]),
        Transaction::write(A, vec![reg::GYRO_CONFIG, (config.gyro as u8) << 3]),
        Transaction::write(A, vec![reg::ACCEL_CONFIG, (config.accel as u8) << 3]),
    ]
}

#[test]
fn init_writes_the_configuration_in_order() {
    let config = Config {
        accel: AccelRange::G8,
        gyro: GyroRange::Dps1000,
        dlpf: 2,
        sample_rate_divider: 4,
    };
    let expect = init_transactions(config);
    // The range fields sit in bits 4:3.
    assert_eq!(expect[4], Transaction::write(A, vec![0x1B, 0x10]));
    assert_eq!(expect[5], Transaction::write(A, vec![0x1C, 0x10]));
    let mut bus = Mock::new(&expect);
    let imu = Mpu6050::init(bus.clone(), A, config).expect("init");
    assert_eq!(imu.config(), config);
    drop(imu);
    bus.done();
}

#[test]
fn a_sample_is_accel_then_gyro_big_endian_without_temperature() {
    let config = Config::default();
    let data = vec![
        0x40, 0x00, // ax = 16384 = 1 g at ±2 g
        0xC0, 0x00, // ay = -16384
        0x00, 0x01, // az = 1
        0x12, 0x34, // temperature, dropped
        0x00, 0x83, // gx = 131 = 1 °/s at ±250
        0xFF, 0x7D, // gy = -131
        0x7F, 0xFF, // gz = 32767
    ];
    let mut expect = init_transactions(config);
    expect.push(Transaction::write_read(
        A,
        vec![reg::ACCEL_XOUT_H],
        data.clone(),
    ));
    expect.push(Transaction::write_read(A, vec![reg::ACCEL_XOUT_H], data));
    let mut bus = Mock::new(&expect);
    let mut imu = Mpu6050::init(bus.clone(), A, config).expect("init");
    let raw: [i16; 6] = Sensor::<i16, 6>::sample(&mut imu).unwrap().unwrap();
    assert_eq!(raw, [16384, -16384, 1, 131, -131, 32767]);
    let si: [f32; 6] = Sensor::<f32, 6>::sample(&mut imu).unwrap().unwrap();
    assert_eq!(si[0], 1.0);
    assert_eq!(si[1], -1.0);
    assert_eq!(si[2], 1.0 / 16384.0);
    assert_eq!(si[3], 1.0);
    assert_eq!(si[4], -1.0);
    assert_eq!(si[5], 32767.0 / 131.0);
    imu.release();
    bus.done();
}

#[test]
fn a_different_chip_is_refused_before_any_write() {
    let expect = [Transaction::write_read(A, vec![reg::WHO_AM_I], vec![0x70])];
    let mut bus = Mock::new(&expect);
    match Mpu6050::init(bus.clone(), A, Config::default()) {
        Err(Error::WrongDevice(0x70)) => {}
        other => panic!("expected WrongDevice(0x70), got {:?}", other.err()),
    }
    bus.done();
}

#[test]
fn a_bus_error_is_returned_not_panicked() {
    let config = Config::default();
    let mut expect = init_transactions(config);
    expect.push(
        Transaction::write_read(A, vec![reg::ACCEL_XOUT_H], vec![0; 14])
            .with_error(ErrorKind::Other),
    );
    let mut bus = Mock::new(&expect);
    let mut imu = Mpu6050::init(bus.clone(), A, config).expect("init");
    let r = Sensor::<i16, 6>::sample(&mut imu);
    assert_eq!(r, Err(Error::I2c(ErrorKind::Other)));
    bus.done();
}

#[test]
fn an_out_of_range_filter_setting_is_refused_without_bus_traffic() {
    let mut bus = Mock::new(&[]);
    let config = Config {
        dlpf: 7,
        ..Config::default()
    };
    assert!(matches!(
        Mpu6050::init(bus.clone(), A, config),
        Err(Error::BadConfig)
    ));
    bus.done();
}
