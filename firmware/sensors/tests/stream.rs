//! The `.rcs` header: round trip and every refusal.

use recur_sensors::stream::{decode, encode, Element, FormatError, Header, HEADER_LEN};

fn header() -> Header {
    Header {
        channels: 6,
        element: Element::F32,
        count: 3,
    }
}

#[test]
fn header_round_trips_and_lengths_add_up() {
    let h = header();
    let b = h.encode();
    assert_eq!(&b[0..4], b"RCS1");
    assert_eq!(Header::parse(&b), Ok(h));
    assert_eq!(h.sample_len(), 24);
    assert_eq!(h.stream_len(), 16 + 3 * 24);
    assert_eq!(h.check_len(88), Ok(()));
    assert_eq!(
        h.check_len(87),
        Err(FormatError::Length {
            expected: 88,
            actual: 87
        })
    );
    assert_eq!(h.check_channels(6), Ok(()));
    assert_eq!(
        h.check_channels(8),
        Err(FormatError::Channels {
            expected: 8,
            actual: 6
        })
    );
}

#[test]
fn corrupted_headers_are_refused() {
    let good = header().encode();
    assert_eq!(
        Header::parse(&good[..HEADER_LEN - 1]),
        Err(FormatError::ShortHeader)
    );
    let mut b = good;
    b[0] = b'X';
    assert_eq!(Header::parse(&b), Err(FormatError::BadMagic));
    let mut b = good;
    b[4] = 0;
    b[5] = 0;
    assert_eq!(Header::parse(&b), Err(FormatError::BadChannels(0)));
    let mut b = good;
    b[6] = 9;
    assert_eq!(Header::parse(&b), Err(FormatError::BadElement(9)));
    let mut b = good;
    b[13] = 1;
    assert_eq!(Header::parse(&b), Err(FormatError::Reserved));
}

#[test]
fn samples_round_trip_and_non_finite_values_are_refused() {
    let v = [1.5f32, -0.0, 3.25e-7, -42.0];
    let mut b = [0u8; 16];
    assert_eq!(encode(&v, &mut b), 16);
    assert_eq!(decode::<f32, 4>(&b, 0), Ok(v));
    b[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(
        decode::<f32, 4>(&b, 7),
        Err(FormatError::NonFinite {
            sample: 7,
            channel: 2
        })
    );
    assert!(matches!(
        decode::<f32, 5>(&b, 0),
        Err(FormatError::Length { .. })
    ));
}

#[test]
fn i16_samples_round_trip_and_element_types_are_checked() {
    let v = [i16::MIN, -1, 0, 12345, i16::MAX];
    let mut b = [0u8; 10];
    assert_eq!(encode(&v, &mut b), 10);
    assert_eq!(decode::<i16, 5>(&b, 0), Ok(v));
    let h = Header {
        channels: 5,
        element: Element::I16,
        count: 1,
    };
    assert_eq!(Header::parse(&h.encode()), Ok(h));
    assert_eq!(h.stream_len(), 26);
    assert_eq!(h.check_element(Element::I16), Ok(()));
    assert_eq!(
        h.check_element(Element::F32),
        Err(FormatError::Element {
            expected: Element::F32,
            actual: Element::I16
        })
    );
}
