//! Samples in from a host `.rcs` file, outputs out to another one, through semihosting in
//! 512-byte chunks (one host round trip per chunk, not per sample).

use crate::host::{File, HostError, Mode};
use core::fmt;
use core::marker::PhantomData;
use recur_sensors::stream::{Element, FormatError, Header, Scalar, HEADER_LEN};
use recur_sensors::Sensor;

/// Bytes moved per semihosting call.
pub const CHUNK: usize = 512;

/// Why a stream could not be read or written; each names the file's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The host could not open the file.
    Open,
    /// A read or write failed part way.
    Host,
    /// The file is not a valid stream for this model.
    Format(FormatError),
}

impl From<HostError> for IoError {
    fn from(_: HostError) -> Self {
        IoError::Host
    }
}

impl From<FormatError> for IoError {
    fn from(e: FormatError) -> Self {
        IoError::Format(e)
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Open => write!(f, "cannot open (missing file or no permission)"),
            IoError::Host => write!(f, "host read/write failed"),
            IoError::Format(e) => write!(f, "{e}"),
        }
    }
}

/// The host file behind a reader: refills a 512-byte buffer and hands out exact byte counts.
struct ChunkReader {
    file: File,
    buf: [u8; CHUNK],
    at: usize,
    filled: usize,
}

impl ChunkReader {
    /// Fills `out` completely; samples may straddle two chunks.
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), IoError> {
        let mut got = 0;
        while got < out.len() {
            if self.at == self.filled {
                self.filled = self.file.read(&mut self.buf)?;
                self.at = 0;
                if self.filled == 0 {
                    // The length was checked at open: the file changed under us.
                    return Err(IoError::Host);
                }
            }
            let take = (out.len() - got).min(self.filled - self.at);
            out[got..got + take].copy_from_slice(&self.buf[self.at..self.at + take]);
            self.at += take;
            got += take;
        }
        Ok(())
    }
}

/// Opens `path` and checks its header against what the reader needs (element type,
/// channels) and the file's length against the header.
fn open_stream(
    path: &str,
    element: Element,
    channels: u16,
) -> Result<(ChunkReader, Header), IoError> {
    let mut file = File::open(path, Mode::Read).map_err(|_| IoError::Open)?;
    let len = file.length()?;
    let mut head = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 {
        return Err(FormatError::ShortHeader.into());
    }
    file.read_exact(&mut head)?;
    let header = Header::parse(&head)?;
    header.check_element(element)?;
    header.check_channels(channels)?;
    header.check_len(len)?;
    let reader = ChunkReader {
        file,
        buf: [0; CHUNK],
        at: 0,
        filled: 0,
    };
    Ok((reader, header))
}

/// An `.rcs` file on the host, read sample by sample: a [`Sensor`] of `N` channels of `T`
/// (`f32`, or `i16` raw counts).
///
/// Opening checks the header, the element type, the channel count and the file's length
/// against the header, so a truncated or padded file is refused before the first sample;
/// each f32 sample is checked for NaN and infinities as it is read.
pub struct FileSensor<T: Scalar, const N: usize> {
    samples: FileSamples<T>,
}

impl<T: Scalar, const N: usize> FileSensor<T, N> {
    /// Opens and checks `path` (one sample must fit in one chunk: at most 128 f32 or 256
    /// i16 channels).
    pub fn open(path: &str) -> Result<Self, IoError> {
        Ok(FileSensor {
            samples: FileSamples::open(path, N)?,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> Header {
        self.samples.header()
    }
}

impl<T: Scalar, const N: usize> Sensor<T, N> for FileSensor<T, N> {
    type Error = IoError;

    fn sample(&mut self) -> Result<Option<[T; N]>, IoError> {
        let mut v = [T::default(); N];
        Ok(self.samples.next_into(&mut v)?.then_some(v))
    }
}

/// An `.rcs` file on the host whose channel count is known only at run time (the model's
/// input width), read sample by sample into a caller's slice.
pub struct FileSamples<T: Scalar> {
    reader: ChunkReader,
    header: Header,
    next: u32,
    element: PhantomData<T>,
}

impl<T: Scalar> FileSamples<T> {
    /// Opens and checks `path`: `channels` values of `T` per sample, at most one chunk.
    pub fn open(path: &str, channels: usize) -> Result<Self, IoError> {
        if channels == 0 || T::ELEMENT.size() * channels > CHUNK {
            return Err(FormatError::BadChannels(channels.min(u16::MAX as usize) as u16).into());
        }
        let (reader, header) = open_stream(path, T::ELEMENT, channels as u16)?;
        Ok(FileSamples {
            reader,
            header,
            next: 0,
            element: PhantomData,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Reads the next sample into `out` (`channels` long); `false` after the last one. Each
    /// value is checked ([`Scalar::is_valid`]: f32 must be finite).
    pub fn next_into(&mut self, out: &mut [T]) -> Result<bool, IoError> {
        if self.next >= self.header.count {
            return Ok(false);
        }
        let size = T::ELEMENT.size();
        let need = size * self.header.channels as usize;
        let mut bytes = [0u8; CHUNK];
        self.reader.read_exact(&mut bytes[..need])?;
        for (ch, (v, b)) in out
            .iter_mut()
            .zip(bytes[..need].chunks_exact(size))
            .enumerate()
        {
            *v = T::read_le(b);
            if !v.is_valid() {
                return Err(FormatError::NonFinite {
                    sample: self.next,
                    channel: ch as u16,
                }
                .into());
            }
        }
        self.next += 1;
        Ok(true)
    }
}

/// An `.rcs` file written on the host, sample by sample; `channels` values of `T` each
/// (fixed by the type for [`FileSink`], at run time for [`FileSink::create_dyn`]).
pub struct FileSink<T: Scalar, const N: usize = 0> {
    file: File,
    buf: [u8; CHUNK],
    at: usize,
    element: PhantomData<T>,
}

impl<T: Scalar, const N: usize> FileSink<T, N> {
    /// Creates (or truncates) `path` and writes a header announcing `count` samples of `N`
    /// channels.
    pub fn create(path: &str, count: u32) -> Result<Self, IoError> {
        Self::with_channels(path, N as u16, count)
    }

    fn with_channels(path: &str, channels: u16, count: u32) -> Result<Self, IoError> {
        let mut file = File::open(path, Mode::Write).map_err(|_| IoError::Open)?;
        let header = Header {
            channels,
            element: T::ELEMENT,
            count,
        };
        file.write_all(&header.encode())?;
        Ok(FileSink {
            file,
            buf: [0; CHUNK],
            at: 0,
            element: PhantomData,
        })
    }

    /// Appends one sample.
    pub fn push(&mut self, v: &[T; N]) -> Result<(), IoError> {
        self.push_slice(v)
    }

    /// Appends values (a whole sample, or the next part of one).
    pub fn push_slice(&mut self, v: &[T]) -> Result<(), IoError> {
        let size = T::ELEMENT.size();
        for x in v {
            if self.at + size > CHUNK {
                self.file.write_all(&self.buf[..self.at])?;
                self.at = 0;
            }
            x.write_le(&mut self.buf[self.at..]);
            self.at += size;
        }
        Ok(())
    }

    /// Writes what is buffered and closes the file.
    pub fn finish(mut self) -> Result<(), IoError> {
        if self.at > 0 {
            self.file.write_all(&self.buf[..self.at])?;
        }
        self.file.close()?;
        Ok(())
    }
}

impl<T: Scalar> FileSink<T, 0> {
    /// Creates (or truncates) `path` for `count` samples of `channels` values each, a width
    /// known only at run time; samples go in with [`FileSink::push_slice`].
    pub fn create_dyn(path: &str, channels: u16, count: u32) -> Result<Self, IoError> {
        Self::with_channels(path, channels, count)
    }
}
