//! The `.rcs` sample-stream format: how samples travel between the host and the firmware.
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"RCS1"
//! 4       2     channels per sample, u16 LE, 1..=MAX_CHANNELS
//! 6       1     element type: 0 = f32 LE, 1 = i16 LE
//! 7       1     reserved, 0
//! 8       4     sample count, u32 LE
//! 12      4     reserved, 0
//! 16      ...   count * channels elements, sample after sample
//! ```
//!
//! A file is valid only when its length is exactly what the header says; f32 samples must
//! also be finite ([`Scalar::is_valid`]). The firmware reads and writes this format through
//! semihosting; host code uses [`Header::encode`] and [`Header::parse`] too.

/// The magic bytes that open every `.rcs` file.
pub const MAGIC: [u8; 4] = *b"RCS1";
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest number of channels a file may declare.
pub const MAX_CHANNELS: u16 = 1024;

/// Element type of the samples in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    /// IEEE-754 single precision, little-endian.
    F32,
    /// Two's-complement 16-bit integer, little-endian.
    I16,
}

impl Element {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::I16 => 2,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Element::F32 => 0,
            Element::I16 => 1,
        }
    }
}

/// What a stream header declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Channels per sample.
    pub channels: u16,
    /// Element type.
    pub element: Element,
    /// Number of samples that follow.
    pub count: u32,
}

/// Why a stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer than [`HEADER_LEN`] bytes.
    ShortHeader,
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// Zero channels or more than [`MAX_CHANNELS`].
    BadChannels(u16),
    /// An element-type code this version does not know.
    BadElement(u8),
    /// A reserved byte is not zero.
    Reserved,
    /// The stream's length differs from what the header declares.
    Length {
        /// Bytes the header implies (header included).
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },
    /// The stream has a different number of channels than the reader needs.
    Channels {
        /// Channels the reader needs.
        expected: u16,
        /// Channels the header declares.
        actual: u16,
    },
    /// The stream's element type differs from what the reader needs.
    Element {
        /// Element type the reader needs.
        expected: Element,
        /// Element type the header declares.
        actual: Element,
    },
    /// A sample holds NaN or an infinity.
    NonFinite {
        /// Index of the sample.
        sample: u32,
        /// Index of the channel.
        channel: u16,
    },
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            FormatError::ShortHeader => write!(f, "shorter than the {HEADER_LEN}-byte header"),
            FormatError::BadMagic => write!(f, "not a sample stream (magic is not RCS1)"),
            FormatError::BadChannels(c) => {
                write!(f, "header declares {c} channels (allowed 1..={MAX_CHANNELS})")
            }
            FormatError::BadElement(e) => write!(f, "unknown element type code {e}"),
            FormatError::Reserved => write!(f, "reserved header bytes are not zero"),
            FormatError::Length { expected, actual } => write!(
                f,
                "length is {actual} bytes but the header implies {expected} (truncated or corrupted)"
            ),
            FormatError::Channels { expected, actual } => {
                write!(f, "stream has {actual} channels, the model needs {expected}")
            }
            FormatError::Element { expected, actual } => {
                write!(f, "stream holds {actual:?} samples, the model needs {expected:?}")
            }
            FormatError::NonFinite { sample, channel } => {
                write!(f, "sample {sample} channel {channel} is NaN or infinite")
            }
        }
    }
}

impl Header {
    /// Bytes in one sample.
    pub const fn sample_len(&self) -> usize {
        self.channels as usize * self.element.size()
    }

    /// Total length of a valid stream with this header, header included.
    pub const fn stream_len(&self) -> u64 {
        HEADER_LEN as u64 + self.count as u64 * self.sample_len() as u64
    }

    /// Writes the header's 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.channels.to_le_bytes());
        b[6] = self.element.code();
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// Parses and checks a header (the first [`HEADER_LEN`] bytes of `bytes`).
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        let b = bytes.get(..HEADER_LEN).ok_or(FormatError::ShortHeader)?;
        if b[0..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let channels = u16::from_le_bytes([b[4], b[5]]);
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(FormatError::BadChannels(channels));
        }
        let element = match b[6] {
            0 => Element::F32,
            1 => Element::I16,
            e => return Err(FormatError::BadElement(e)),
        };
        if b[7] != 0 || b[12..16] != [0; 4] {
            return Err(FormatError::Reserved);
        }
        let count = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        Ok(Header {
            channels,
            element,
            count,
        })
    }

    /// Checks that a stream of `actual` bytes matches this header exactly.
    pub fn check_len(&self, actual: u64) -> Result<(), FormatError> {
        let expected = self.stream_len();
        if expected == actual {
            Ok(())
        } else {
            Err(FormatError::Length { expected, actual })
        }
    }

    /// Checks that the stream holds elements of type `expected`.
    pub fn check_element(&self, expected: Element) -> Result<(), FormatError> {
        if self.element == expected {
            Ok(())
        } else {
            Err(FormatError::Element {
                expected,
                actual: self.element,
            })
        }
    }

    /// Checks that the stream has the `expected` number of channels.
    pub fn check_channels(&self, expected: u16) -> Result<(), FormatError> {
        if self.channels == expected {
            Ok(())
        } else {
            Err(FormatError::Channels {
                expected,
                actual: self.channels,
            })
        }
    }
}

/// An element type a stream can carry: `f32` (checked finite) or `i16` (raw sensor counts,
/// fixed-point kernel inputs and outputs).
pub trait Scalar: Copy + Default {
    /// The header's element type for this Rust type.
    const ELEMENT: Element;
    /// Reads one element from the first [`Element::size`] bytes of `b` (little-endian).
    fn read_le(b: &[u8]) -> Self;
    /// Writes one element into the first [`Element::size`] bytes of `out` (little-endian).
    fn write_le(self, out: &mut [u8]);
    /// Whether the value may enter a model (f32: finite).
    fn is_valid(self) -> bool;
}

impl Scalar for f32 {
    const ELEMENT: Element = Element::F32;

    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn write_le(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.to_le_bytes());
    }

    fn is_valid(self) -> bool {
        self.is_finite()
    }
}

impl Scalar for i16 {
    const ELEMENT: Element = Element::I16;

    fn read_le(b: &[u8]) -> Self {
        i16::from_le_bytes([b[0], b[1]])
    }

    fn write_le(self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.to_le_bytes());
    }

    fn is_valid(self) -> bool {
        true
    }
}

/// Decodes one sample of `N` channels of `T` from the first `N * size` bytes of `bytes`,
/// checking every value ([`Scalar::is_valid`]); `index` is the sample's index, for the
/// error.
pub fn decode<T: Scalar, const N: usize>(bytes: &[u8], index: u32) -> Result<[T; N], FormatError> {
    let size = T::ELEMENT.size();
    if bytes.len() < size * N {
        return Err(FormatError::Length {
            expected: (size * N) as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut out = [T::default(); N];
    for (ch, (v, b)) in out.iter_mut().zip(bytes.chunks_exact(size)).enumerate() {
        *v = T::read_le(b);
        if !v.is_valid() {
            return Err(FormatError::NonFinite {
                sample: index,
                channel: ch as u16,
            });
        }
    }
    Ok(out)
}

/// Encodes values little-endian into `out` (at least `size * values.len()` long); returns
/// the number of bytes written.
pub fn encode<T: Scalar>(values: &[T], out: &mut [u8]) -> usize {
    let size = T::ELEMENT.size();
    let mut n = 0;
    for (v, b) in values.iter().zip(out.chunks_exact_mut(size)) {
        v.write_le(b);
        n += size;
    }
    n
}
