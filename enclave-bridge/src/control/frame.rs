//! Length-prefixed frames: a 4-byte big-endian payload length, then the
//! payload.
//!
//! The length is checked against the cap before a single payload byte is
//! read or a buffer allocated; the payload buffer is then allocated once, at
//! its final size, in zeroizing memory (frames carry credentials, and a
//! growing `Vec` would leave copies behind in freed memory).

use std::io;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

/// Default (and maximum sensible) frame payload size: 4 MiB.
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: u64, max: u32 },
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("timed out waiting for a frame")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Read one frame. `Ok(None)`: the peer closed cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    max_len: u32,
) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, expected: 4 })
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: max_len,
        });
    }
    let len = len as usize;
    let mut payload = Zeroizing::new(vec![0u8; len]);
    let mut got = 0;
    while got < len {
        let n = reader.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, expected: len });
        }
        got += n;
    }
    Ok(Some(payload))
}

/// Write one frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    payload: &[u8],
    max_len: u32,
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= max_len)
        .ok_or(FrameError::TooLarge {
            len: payload.len() as u64,
            max: max_len,
        })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await?;
    writer.flush().await?;
    Ok(())
}

/// Serialise `value` as JSON into a zeroizing buffer allocated once at its
/// final size (a first pass counts the bytes), so no partial copy of a secret
/// is left in a freed, grown-out buffer.
pub fn to_json_zeroizing<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value)?;
    Ok(out)
}
