//! Length-prefixed MessagePack frames on QUIC unidirectional streams.
//!
//! Wire format of a stream: one class tag byte ([`StreamClass::tag`]), then frames, each a
//! 4-byte big-endian payload length followed by the payload, one value encoded with rmp-serde
//! (compact form: structs as arrays). A payload longer than the receiver's limit, a payload that
//! does not decode, or one with bytes left over is a [`FrameError`]; a stream that ends inside a
//! frame is [`FrameError::Truncated`]. Nothing a peer sends can make the receiver panic or
//! allocate more than its limit.
//!
//! Order holds within a stream only: use one long-lived stream per class, not one per message.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// Default largest payload of one frame: 4 MiB. Snapshot chunks must be cut below it.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;
/// Bytes of the length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Application error code sent with `STOP_SENDING` when a stream's class tag is unknown.
const STOP_UNKNOWN_CLASS: u32 = 1;

/// The kind of a stream, announced by its first byte; it decides the stream's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamClass {
    /// Deltas and digests: small, latency-sensitive, sent before any bulk data.
    Control,
    /// Snapshot chunks: large, sent only when no control data is waiting.
    Bulk,
}

impl StreamClass {
    /// The byte that opens a stream of this class.
    pub const fn tag(self) -> u8 {
        match self {
            StreamClass::Control => 0x01,
            StreamClass::Bulk => 0x02,
        }
    }

    /// The class announced by a tag byte, if any.
    pub const fn from_tag(tag: u8) -> Option<StreamClass> {
        match tag {
            0x01 => Some(StreamClass::Control),
            0x02 => Some(StreamClass::Bulk),
            _ => None,
        }
    }

    /// The quinn send priority (higher goes first). Priority is strict but does not pace:
    /// a saturating bulk sender still adds queueing delay, so pace bulk in the application.
    pub const fn priority(self) -> i32 {
        match self {
            StreamClass::Control => 10,
            StreamClass::Bulk => -10,
        }
    }
}

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame's payload exceeds the limit (on send: not sent; on receive: not read).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The payload is not a valid encoding of the expected type.
    #[error("cannot decode frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The payload holds more than one value.
    #[error("frame has bytes after its value")]
    TrailingBytes,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream ended before its class tag.
    #[error("stream ended before its class tag")]
    MissingTag,
    /// The stream's class tag is not a known [`StreamClass`].
    #[error("unknown stream class tag {0:#04x}")]
    UnknownClass(u8),
    /// Writing failed (connection lost, or the peer stopped the stream).
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed (connection lost, or the peer reset the stream).
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream was already finished or reset locally.
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// The peer stopped the stream before reading all of it.
    #[error("peer stopped the stream with code {0}")]
    Stopped(quinn::VarInt),
    /// The connection failed while waiting for the peer.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl FrameError {
    /// True if the peer violated the protocol (bad tag, oversized or undecodable frame, stream
    /// cut inside a frame). The caller should close that connection and only that one, with
    /// [`CloseReason::Protocol`](crate::CloseReason::Protocol).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::Decode(_)
                | FrameError::TrailingBytes
                | FrameError::Truncated
                | FrameError::MissingTag
                | FrameError::UnknownClass(_)
        )
    }
}

/// Appends one frame (length prefix and payload) holding `value` to `out`; returns the payload
/// length. On error `out` is left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    value: &T,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = rmp_serde::encode::write(out, value) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - FRAME_HEADER_LEN;
    let max = clamp_max(max_frame);
    match u32::try_from(len) {
        Ok(len32) if len <= max => {
            out[start..start + FRAME_HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
            Ok(len)
        }
        _ => {
            out.truncate(start);
            Err(FrameError::TooLarge { len, max })
        }
    }
}

/// Decodes the payload of one frame (without its length prefix). Pure, for fuzzing: any input
/// gives a value or an error. The whole payload must be one value.
pub fn decode_frame<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    let value = T::deserialize(&mut de)?;
    // Anything readable after the value means the frame is not what the sender meant.
    match IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Ok(value)
        }
        _ => Err(FrameError::TrailingBytes),
    }
}

/// The payload length announced by the frame at the start of `buf`, if its header is complete.
/// Errors if it exceeds `max_frame`. Pure, for fuzzing and for the receiver.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    // u32 always fits in usize on the 32- and 64-bit targets quinn supports.
    let len = u32::from_be_bytes(*header) as usize;
    let max = clamp_max(max_frame);
    if len > max { Err(FrameError::TooLarge { len, max }) } else { Ok(Some(len)) }
}

/// Limits above `u32::MAX` cannot be expressed by the length prefix.
fn clamp_max(max_frame: usize) -> usize {
    max_frame.min(u32::MAX as usize)
}

/// Frames encoded ahead of sending, for a sender that lives in another task than the data
/// (the data's owner encodes from borrowed state, then hands the bytes over; no copy of the
/// data itself crosses tasks).
///
/// [`EncodedFrames::push`] accepts any serializable value: the caller vouches that it encodes
/// exactly as a message of the stream's type would (a borrowed view of an owned message).
#[derive(Debug, Default)]
pub struct EncodedFrames {
    buf: Vec<u8>,
    payload: usize,
    frames: u64,
}

impl EncodedFrames {
    /// No frames yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// No frames yet, with room for `bytes` of them: a large frame then never moves while it
    /// is being encoded.
    pub fn with_capacity(bytes: usize) -> Self {
        EncodedFrames { buf: Vec::with_capacity(bytes), payload: 0, frames: 0 }
    }

    /// Appends one frame holding `value`; returns its payload length. On error nothing is
    /// appended.
    pub fn push<U: Serialize + ?Sized>(&mut self, value: &U, max_frame: usize) -> Result<usize, FrameError> {
        let len = encode_frame(value, max_frame, &mut self.buf)?;
        self.payload += len;
        self.frames += 1;
        Ok(len)
    }

    /// Payload bytes of the frames (without length prefixes), as the sender counts them.
    pub fn payload_len(&self) -> usize {
        self.payload
    }

    /// Frames held.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frames as they go on the stream (length prefixes and payloads).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The sending half of a framed stream, typed by the message it carries.
///
/// `send` and `send_batch` are not cancel-safe: dropping one mid-way may leave half a frame on
/// the stream, which the peer reports as a decode error. Do not race them in `select!`.
#[derive(Debug)]
pub struct FrameSender<T: ?Sized> {
    stream: quinn::SendStream,
    class: StreamClass,
    max_frame: usize,
    bytes_sent: u64,
    frames_sent: u64,
    _message: PhantomData<fn(&T)>,
}

impl<T: Serialize + ?Sized> FrameSender<T> {
    /// Opens a unidirectional stream of `class` on `connection`: sets its priority and writes
    /// the class tag, so the peer sees the stream at once.
    pub async fn open(
        connection: &quinn::Connection,
        class: StreamClass,
        max_frame: usize,
    ) -> Result<FrameSender<T>, FrameError> {
        let mut stream = connection.open_uni().await?;
        stream.set_priority(class.priority())?;
        stream.write_all(&[class.tag()]).await?;
        Ok(FrameSender { stream, class, max_frame, bytes_sent: 0, frames_sent: 0, _message: PhantomData })
    }

    /// Sends one message; returns its payload length.
    pub async fn send(&mut self, message: &T) -> Result<usize, FrameError> {
        let mut buf = Vec::new();
        let len = encode_frame(message, self.max_frame, &mut buf)?;
        self.stream.write_chunk(Bytes::from(buf)).await?;
        self.bytes_sent += len as u64;
        self.frames_sent += 1;
        Ok(len)
    }

    /// Sends several messages with one write (much cheaper per message than one write each);
    /// returns their total payload length. If one fails to encode, none is sent.
    pub async fn send_batch<'a, I>(&mut self, messages: I) -> Result<usize, FrameError>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let mut buf = Vec::new();
        let mut total = 0;
        let mut frames = 0;
        for message in messages {
            total += encode_frame(message, self.max_frame, &mut buf)?;
            frames += 1;
        }
        if frames > 0 {
            self.stream.write_chunk(Bytes::from(buf)).await?;
        }
        self.bytes_sent += total as u64;
        self.frames_sent += frames;
        Ok(total)
    }

    /// Sends frames encoded elsewhere with one write; returns their payload length.
    pub async fn send_encoded(&mut self, frames: EncodedFrames) -> Result<usize, FrameError> {
        let EncodedFrames { buf, payload, frames } = frames;
        if frames > 0 {
            self.stream.write_chunk(Bytes::from(buf)).await?;
        }
        self.bytes_sent += payload as u64;
        self.frames_sent += frames;
        Ok(payload)
    }

    /// Payload bytes sent so far (excluding tag and length prefixes).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// The stream's class.
    pub fn class(&self) -> StreamClass {
        self.class
    }

    /// The largest payload this sender accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest payload this sender accepts.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Finishes the stream and waits until the peer has acknowledged every byte of it.
    /// `Connection::close` discards unsent and unacknowledged stream data, so call this on
    /// every sender before closing a connection whose last messages matter. Errors if the peer
    /// stopped the stream or the connection failed first.
    pub async fn finish_and_wait(mut self) -> Result<(), FrameError> {
        self.stream.finish()?;
        match self.stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(FrameError::Stopped(code)),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(FrameError::Connection(e)),
            // 0-RTT is never enabled by this crate; report it as a lost connection anyway.
            Err(quinn::StoppedError::ZeroRttRejected) => {
                Err(FrameError::Connection(quinn::ConnectionError::LocallyClosed))
            }
        }
    }
}

/// The receiving half of a framed stream, typed by the message it carries.
#[derive(Debug)]
pub struct FrameReceiver<T> {
    stream: quinn::RecvStream,
    class: StreamClass,
    max_frame: usize,
    /// Bytes read from the stream and not yet returned as frames.
    buf: BytesMut,
    bytes_received: u64,
    frames_received: u64,
    _message: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> FrameReceiver<T> {
    /// Accepts the next unidirectional stream opened by the peer and reads its class tag. An
    /// unknown tag stops that stream and is an error (the connection itself is untouched).
    pub async fn accept(
        connection: &quinn::Connection,
        max_frame: usize,
    ) -> Result<FrameReceiver<T>, FrameError> {
        let mut stream = connection.accept_uni().await?;
        let mut tag = [0u8; 1];
        match stream.read_exact(&mut tag).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::MissingTag),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        let Some(class) = StreamClass::from_tag(tag[0]) else {
            let _ = stream.stop(quinn::VarInt::from_u32(STOP_UNKNOWN_CLASS));
            return Err(FrameError::UnknownClass(tag[0]));
        };
        Ok(FrameReceiver::new(stream, class, max_frame))
    }

    /// Wraps a stream whose class tag has already been read.
    pub fn new(stream: quinn::RecvStream, class: StreamClass, max_frame: usize) -> Self {
        FrameReceiver {
            stream,
            class,
            max_frame,
            buf: BytesMut::new(),
            bytes_received: 0,
            frames_received: 0,
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes already read stay buffered for the next call, so `recv` may be
    /// raced in `select!`. After [`FrameError::TooLarge`] the stream cannot be resynchronised;
    /// after a decode error the next frame is still readable.
    pub async fn recv(&mut self) -> Result<Option<T>, FrameError> {
        match self.recv_payload().await? {
            Some(payload) => decode_frame(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame's payload, undecoded (for [`decode_frame`] elsewhere, e.g. on another
    /// thread, so decoding large frames overlaps with using the previous ones); `Ok(None)` as
    /// for [`FrameReceiver::recv`], and cancel-safe like it.
    pub async fn recv_payload(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(len) = frame_len(&self.buf, self.max_frame)? {
                let total = FRAME_HEADER_LEN + len;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(FRAME_HEADER_LEN);
                    self.bytes_received += len as u64;
                    self.frames_received += 1;
                    return Ok(Some(frame.freeze()));
                }
                // Room for the whole frame at once, instead of growing chunk by chunk.
                self.buf.reserve(total - self.buf.len());
            }
            match self.stream.read_chunk(usize::MAX, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(FrameError::Truncated),
            }
        }
    }

    /// Payload bytes received so far (excluding tag and length prefixes).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Frames received so far (including ones that failed to decode).
    pub fn frames_received(&self) -> u64 {
        self.frames_received
    }

    /// The stream's class, from its tag.
    pub fn class(&self) -> StreamClass {
        self.class
    }

    /// The largest payload this receiver accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest payload this receiver accepts.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Delta { seq: u64, entries: Vec<(String, Option<String>)> },
        Digest(Vec<u64>),
    }

    #[test]
    fn round_trip_and_limits() {
        let msgs = [
            Msg::Delta { seq: 1, entries: vec![("k".into(), Some("v".into())), ("d".into(), None)] },
            Msg::Digest(vec![1, 2, 3]),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            encode_frame(m, 1024, &mut buf).unwrap();
        }
        let mut rest = &buf[..];
        for m in &msgs {
            let len = frame_len(rest, 1024).unwrap().unwrap();
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            assert_eq!(&decode_frame::<Msg>(payload).unwrap(), m);
            rest = &rest[FRAME_HEADER_LEN + len..];
        }
        assert!(rest.is_empty());
        assert_eq!(frame_len(&buf[..3], 1024).unwrap(), None);
        assert!(matches!(frame_len(&buf, 2), Err(FrameError::TooLarge { max: 2, .. })));

        let before = buf.clone();
        let err = encode_frame(&Msg::Digest(vec![0; 100]), 10, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 10, .. }), "{err}");
        assert_eq!(buf, before, "a failed encode leaves the buffer untouched");
    }

    #[test]
    fn encoded_frames_are_the_frames_of_encode_frame() {
        let msgs = [Msg::Digest(vec![1, 2]), Msg::Delta { seq: 3, entries: vec![("k".into(), None)] }];
        let mut expected = Vec::new();
        let mut frames = EncodedFrames::new();
        assert!(frames.is_empty());
        let mut payload = 0;
        for m in &msgs {
            payload += encode_frame(m, 1024, &mut expected).unwrap();
            frames.push(m, 1024).unwrap();
        }
        assert_eq!(frames.as_bytes(), &expected[..]);
        assert_eq!((frames.payload_len(), frames.frames()), (payload, 2));
        assert!(frames.push(&Msg::Digest(vec![0; 100]), 10).is_err());
        assert_eq!(frames.as_bytes(), &expected[..], "a failed push appends nothing");
    }

    #[test]
    fn bad_payloads_are_errors() {
        let good = rmp_serde::to_vec(&Msg::Digest(vec![7])).unwrap();
        let mut trailing = good.clone();
        trailing.push(0x00);
        assert!(matches!(decode_frame::<Msg>(&trailing), Err(FrameError::TrailingBytes)));
        let mut garbage_tail = good.clone();
        garbage_tail.push(0xc1); // reserved marker
        assert!(matches!(decode_frame::<Msg>(&garbage_tail), Err(FrameError::TrailingBytes)));
        assert!(matches!(decode_frame::<Msg>(&[]), Err(FrameError::Decode(_))));
        assert!(matches!(decode_frame::<Msg>(&good[..good.len() - 1]), Err(FrameError::Decode(_))));
        for len in 0..good.len() {
            let _ = decode_frame::<Msg>(&good[..len]);
        }
        // Declares a 4 GiB binary: must fail without allocating it.
        assert!(decode_frame::<Vec<u8>>(&[0xc6, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(FrameError::TrailingBytes.is_protocol_violation());
        assert!(!FrameError::Stopped(quinn::VarInt::from_u32(0)).is_protocol_violation());
    }

    #[test]
    fn class_tags_round_trip() {
        for class in [StreamClass::Control, StreamClass::Bulk] {
            assert_eq!(StreamClass::from_tag(class.tag()), Some(class));
        }
        assert_eq!(StreamClass::from_tag(0), None);
        assert!(StreamClass::Control.priority() > StreamClass::Bulk.priority());
    }
}
