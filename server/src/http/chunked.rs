//! Strict, incremental, zero-copy decoder for `Transfer-Encoding: chunked`
//! request bodies (RFC 9112 §7.1).
//!
//! Owns: the byte-level state machine from the first chunk-size line to the
//! CRLF that ends the trailer section, the limits on chunk-size digits,
//! extension bytes, trailer bytes and total body size, and nothing else.
//!
//! Invariants:
//! * Input may be split anywhere; the state machine carries everything across
//!   calls, so any split of a body yields the same data bytes, in order, and
//!   the same final state (or the same error) as feeding it whole.
//! * `decode` never copies body data: a returned data slice borrows from the
//!   input it was given. It returns at most one data slice per call.
//! * Progress: on non-empty input, before `Done` and without an error,
//!   `decode` consumes at least one byte. After `Done` it consumes nothing:
//!   bytes after the final CRLF belong to the next request.
//! * Errors are sticky: once `decode` failed, every later call fails with
//!   the same error. The connection must be closed after responding.
//! * Total data bytes never exceed `Limits::max_body` (413, decided from the
//!   chunk-size line before any of that chunk's data is returned).
//!
//! Strict choices (deliberately stricter than httparse::parse_chunk_size,
//! which accepts an empty size line as the last chunk and lets a bare LF end
//! an extension - both request-smuggling vectors):
//! * Every line ends in CRLF. A bare LF, or a CR not followed by LF, is an
//!   error everywhere (size line, extension, after data, trailers, end).
//! * chunk-size is 1 to 64 hex digits, of which at most 16 significant (the
//!   value fits in u64; leading zeros as nginx accepts them), case-insensitive.
//!   `0x`, signs, and empty sizes are rejected.
//! * Whitespace in the chunk-size line only where RFC 9112 §7.1.1 puts BWS:
//!   before each `;` and around an extension's name and `=`. RFC 9110 §5.6.3
//!   forbids senders to generate BWS but says recipients MUST parse it.
//!   Whitespace anywhere else is an error: before the size, inside it, and
//!   between the size line's last element and its CRLF (`5 \r\n`, `5;a \r\n`:
//!   the grammar only has BWS in front of a `;`).
//! * chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ),
//!   validated and then ignored. Limited per line and per body (its
//!   whitespace included).
//! * Chunk data must be followed by exactly CRLF.
//! * Trailer fields are parsed minimally (token ":" field-value CRLF; no
//!   obs-fold, no whitespace before the colon, no CTLs) and discarded, the
//!   whole section bounded by `Limits::max_trailer` (431). Because they are
//!   discarded, forbidden trailer fields (Content-Length, Host, ...) are
//!   harmless and not checked.
//!
//! Must not: allocate, copy data, look at anything after the final CRLF, or
//! decide how to answer (that is `Error::status`).

use super::error::Error;
use super::limits::{Limits, MAX_CHUNK_SIZE_DIGITS};
use super::request::{is_field_value_byte, is_tchar};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the chunk-size hex digits (`digits` read so far, value in `size`).
    Size,
    /// After the chunk-size and whitespace: only more whitespace or `;` may follow.
    SizeWs,
    /// Just after `;` (and any whitespace): an extension name must start.
    ExtStart,
    /// Inside an extension name.
    ExtName,
    /// Whitespace after an extension name: `=`, `;` or more whitespace must follow.
    ExtNameWs,
    /// Whitespace after an extension value: `;` or more whitespace must follow.
    ExtValueWs,
    /// Just after `=`: a token or a quoted-string must start.
    ExtValueStart,
    /// Inside a token extension value.
    ExtToken,
    /// Inside a quoted-string extension value.
    ExtQuoted,
    /// After a backslash inside a quoted-string.
    ExtQuotedEscape,
    /// After the closing quote of a quoted-string.
    ExtQuotedEnd,
    /// After the CR of the chunk-size line.
    SizeLf,
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerLineStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// After the CR of a trailer field line.
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
    /// The final CRLF has been consumed.
    Done,
    /// A previous call failed with this error.
    Failed(Error),
}

/// Incremental chunked body decoder. One per request body; no allocation.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    ext_line: usize,
    ext_total: usize,
    trailer: usize,
    total: u64,
    max_body: u64,
    max_ext_line: usize,
    max_ext_total: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    /// A decoder positioned before the first chunk-size line.
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            ext_line: 0,
            ext_total: 0,
            trailer: 0,
            total: 0,
            max_body: limits.max_body,
            max_ext_line: limits.max_chunk_ext_line,
            max_ext_total: limits.max_chunk_ext_total,
            max_trailer: limits.max_trailer,
        }
    }

    /// Whether the last-chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes announced by the chunk-size lines read so far.
    pub fn body_len(&self) -> u64 {
        self.total
    }

    /// Decode from the start of `input`.
    ///
    /// Returns `(consumed, data)`: the caller drops `input[..consumed]` and
    /// delivers `data` (a sub-slice of `input[..consumed]`) if any, then calls
    /// again with the remaining bytes (plus newly received ones). At most one
    /// data slice is returned per call, so loop until `consumed` is 0 or
    /// `is_done()`.
    pub fn decode<'b>(&mut self, input: &'b [u8]) -> Result<(usize, Option<&'b [u8]>), Error> {
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        match self.run(input) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.state = State::Failed(e);
                Err(e)
            }
        }
    }

    fn ext_byte(&mut self) -> Result<(), Error> {
        self.ext_line += 1;
        self.ext_total += 1;
        if self.ext_line > self.max_ext_line || self.ext_total > self.max_ext_total {
            return Err(Error::InvalidChunkExtension);
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), Error> {
        self.trailer += 1;
        if self.trailer > self.max_trailer {
            return Err(Error::TrailerTooLarge);
        }
        Ok(())
    }

    fn run<'b>(&mut self, input: &'b [u8]) -> Result<(usize, Option<&'b [u8]>), Error> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let n = remaining.min(avail);
                    let end = i + n as usize;
                    let left = remaining - n;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok((end, Some(&input[i..end])));
                }
                State::Done => return Ok((i, None)),
                State::Failed(e) => return Err(e),
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // A 17th significant digit would overflow u64.
                        if self.digits == MAX_CHUNK_SIZE_DIGITS || self.size >> 60 != 0 {
                            return Err(Error::InvalidChunkSize);
                        }
                        let v = match b {
                            b'0'..=b'9' => b - b'0',
                            b'a'..=b'f' => b - b'a' + 10,
                            _ => b - b'A' + 10,
                        };
                        self.size = (self.size << 4) | u64::from(v);
                        self.digits += 1;
                        State::Size
                    }
                    b';' if self.digits > 0 => {
                        self.ext_line = 0;
                        self.ext_byte()?;
                        State::ExtStart
                    }
                    b' ' | b'\t' if self.digits > 0 => {
                        self.ext_line = 0;
                        self.ext_byte()?;
                        State::SizeWs
                    }
                    b'\r' if self.digits > 0 => State::SizeLf,
                    _ => return Err(Error::InvalidChunkSize),
                },
                State::SizeWs => {
                    self.ext_byte()?;
                    match b {
                        b' ' | b'\t' => State::SizeWs,
                        b';' => State::ExtStart,
                        _ => return Err(Error::InvalidChunkSize),
                    }
                }
                State::ExtStart => {
                    self.ext_byte()?;
                    match b {
                        b' ' | b'\t' => State::ExtStart,
                        _ if is_tchar(b) => State::ExtName,
                        _ => return Err(Error::InvalidChunkExtension),
                    }
                }
                State::ExtName | State::ExtToken => {
                    if b == b'\r' {
                        State::SizeLf
                    } else {
                        self.ext_byte()?;
                        match b {
                            b';' => State::ExtStart,
                            b'=' if self.state == State::ExtName => State::ExtValueStart,
                            b' ' | b'\t' if self.state == State::ExtName => State::ExtNameWs,
                            b' ' | b'\t' => State::ExtValueWs,
                            _ if is_tchar(b) => self.state,
                            _ => return Err(Error::InvalidChunkExtension),
                        }
                    }
                }
                State::ExtNameWs | State::ExtValueWs => {
                    self.ext_byte()?;
                    match b {
                        b' ' | b'\t' => self.state,
                        b';' => State::ExtStart,
                        b'=' if self.state == State::ExtNameWs => State::ExtValueStart,
                        _ => return Err(Error::InvalidChunkExtension),
                    }
                }
                State::ExtValueStart => {
                    self.ext_byte()?;
                    match b {
                        b' ' | b'\t' => State::ExtValueStart,
                        b'"' => State::ExtQuoted,
                        _ if is_tchar(b) => State::ExtToken,
                        _ => return Err(Error::InvalidChunkExtension),
                    }
                }
                State::ExtQuoted => {
                    self.ext_byte()?;
                    match b {
                        b'"' => State::ExtQuotedEnd,
                        b'\\' => State::ExtQuotedEscape,
                        // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
                        b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => {
                            State::ExtQuoted
                        }
                        _ => return Err(Error::InvalidChunkExtension),
                    }
                }
                State::ExtQuotedEscape => {
                    self.ext_byte()?;
                    match b {
                        b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => State::ExtQuoted,
                        _ => return Err(Error::InvalidChunkExtension),
                    }
                }
                State::ExtQuotedEnd => match b {
                    b'\r' => State::SizeLf,
                    b';' => {
                        self.ext_byte()?;
                        State::ExtStart
                    }
                    b' ' | b'\t' => {
                        self.ext_byte()?;
                        State::ExtValueWs
                    }
                    _ => return Err(Error::InvalidChunkExtension),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Error::InvalidChunkSize);
                    }
                    let size = self.size;
                    self.size = 0;
                    self.digits = 0;
                    if size == 0 {
                        State::TrailerLineStart
                    } else {
                        self.total = match self.total.checked_add(size) {
                            Some(t) if t <= self.max_body => t,
                            _ => return Err(Error::BodyTooLarge),
                        };
                        State::Data { remaining: size }
                    }
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(Error::InvalidChunkData),
                },
                State::DataLf => match b {
                    b'\n' => State::Size,
                    _ => return Err(Error::InvalidChunkData),
                },
                State::TrailerLineStart => match b {
                    b'\r' => State::EndLf,
                    _ if is_tchar(b) => {
                        self.trailer_byte()?;
                        State::TrailerName
                    }
                    _ => return Err(Error::InvalidTrailer),
                },
                State::TrailerName => {
                    self.trailer_byte()?;
                    match b {
                        b':' => State::TrailerValue,
                        _ if is_tchar(b) => State::TrailerName,
                        _ => return Err(Error::InvalidTrailer),
                    }
                }
                State::TrailerValue => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        _ if is_field_value_byte(b) => State::TrailerValue,
                        _ => return Err(Error::InvalidTrailer),
                    }
                }
                State::TrailerLf => {
                    self.trailer_byte()?;
                    match b {
                        b'\n' => State::TrailerLineStart,
                        _ => return Err(Error::InvalidTrailer),
                    }
                }
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok((i + 1, None));
                    }
                    _ => return Err(Error::InvalidTrailer),
                },
            };
            i += 1;
        }
        Ok((i, None))
    }
}

#[cfg(test)]
mod tests {
    use super::{ChunkedDecoder, Error, Limits};

    /// Feed `input` in pieces of `step` bytes (simulating reads), collecting
    /// data. Returns (data, bytes consumed, done).
    fn feed(input: &[u8], step: usize, limits: &Limits) -> Result<(Vec<u8>, usize, bool), Error> {
        let mut d = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut avail = 0;
        while avail < input.len() && !d.is_done() {
            avail = (avail + step).min(input.len());
            loop {
                let (n, data) = d.decode(&input[pos..avail])?;
                pos += n;
                if let Some(data) = data {
                    out.extend_from_slice(data);
                }
                if n == 0 || d.is_done() {
                    break;
                }
            }
        }
        Ok((out, pos, d.is_done()))
    }

    fn whole(input: &[u8]) -> Result<(Vec<u8>, usize, bool), Error> {
        feed(input, input.len().max(1), &Limits::default())
    }

    const ACCEPT: &[(&[u8], &[u8])] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"0\r\n\r\n", b""),
        (b"000\r\n\r\n", b""),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"00000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"0000000000000000000000000000000000000000000000000000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;a\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;a=b;c;d=e\r\nhello\r\n0;x=y\r\n\r\n", b"hello"),
        (b"5;a=\"b \\\" ;c\"\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;a=\"\";b=\"x\"\r\nhello\r\n0\r\n\r\n", b"hello"),
        // BWS (RFC 9112 §7.1.1): before `;`, after it, around `=`.
        (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5; a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;a = b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (
            b"5\t;\ta\t=\t\"b\" ; c ;d\r\nhello\r\n0 ; e\r\n\r\n",
            b"hello",
        ),
        (b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n"),
        (b"0\r\nX-Trailer: v\r\n\r\n", b""),
        (b"0\r\nA: 1\r\nB:\r\nC: \t x \xff\r\n\r\n", b""),
    ];

    #[test]
    fn accepts_valid_bodies_whole_and_bytewise() {
        for (input, want) in ACCEPT {
            for step in [input.len(), 1, 2, 3, 7] {
                let got = feed(input, step, &Limits::default());
                assert_eq!(
                    got,
                    Ok((want.to_vec(), input.len(), true)),
                    "step {step}: {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn stops_at_end_of_body() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (data, n, done) = whole(input).unwrap();
        assert_eq!((data.as_slice(), n, done), (&b"abc"[..], 13, true));
        let mut d = ChunkedDecoder::new(&Limits::default());
        assert_eq!(d.decode(b"0\r\n\r\n"), Ok((5, None)));
        assert_eq!(d.decode(b"more"), Ok((0, None)));
        assert!(d.is_done());
    }

    #[test]
    fn data_is_borrowed_not_copied() {
        let input = b"5\r\nhello\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new(&Limits::default());
        let (n, data) = d.decode(input).unwrap();
        assert_eq!(n, 8);
        let data = data.unwrap();
        assert_eq!(data.as_ptr(), input[3..].as_ptr());
        assert_eq!(d.body_len(), 5);
    }

    const REJECT: &[(&str, &[u8], Error)] = &[
        (
            "empty size",
            b"\r\nhello\r\n0\r\n\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "empty size as last chunk",
            b"5\r\nhello\r\n\r\n",
            Error::InvalidChunkSize,
        ),
        ("non-hex", b"g\r\n", Error::InvalidChunkSize),
        ("0x prefix", b"0x5\r\nhello\r\n", Error::InvalidChunkSize),
        ("plus", b"+5\r\nhello\r\n", Error::InvalidChunkSize),
        ("minus", b"-5\r\nhello\r\n", Error::InvalidChunkSize),
        ("leading space", b" 5\r\nhello\r\n", Error::InvalidChunkSize),
        (
            "trailing space",
            b"5 \r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        ("tab", b"5\t\r\nhello\r\n", Error::InvalidChunkSize),
        (
            "whitespace then CRLF after size",
            b"5 \t\r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "whitespace then a digit",
            b"5 5\r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "whitespace after an ext name, then CRLF",
            b"5;a \r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "whitespace after an ext value, then CRLF",
            b"5;a=b \r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "whitespace after a quoted value, then CRLF",
            b"5;a=\"b\"\t\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "whitespace after a value, then =",
            b"5;a=b =c\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "whitespace only after ;",
            b"5; \r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "65 digits",
            b"00000000000000000000000000000000000000000000000000000000000000005\r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "17 significant digits",
            b"10000000000000005\r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "overflow",
            b"10000000000000000\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "bare LF after size",
            b"5\nhello\r\n0\r\n\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "CR without LF after size",
            b"5\rhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "CR CR LF after size",
            b"5\r\r\nhello\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "bare LF after last-chunk",
            b"0\n\r\n",
            Error::InvalidChunkSize,
        ),
        (
            "bare LF in extension",
            b"5;a\nhello\r\n0\r\n\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "bare LF in ext value",
            b"5;a=b\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "empty extension",
            b"5;\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext double ;",
            b"5;;a\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext no name",
            b"5;=a\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext no value",
            b"5;a=\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext space in value",
            b"5;a=b c\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext unterminated quote",
            b"5;a=\"b\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext NUL in quote",
            b"5;a=\"b\0\"\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext junk after quote",
            b"5;a=\"b\"c\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "ext double =",
            b"5;a=b=c\r\nhello\r\n",
            Error::InvalidChunkExtension,
        ),
        (
            "data not followed by CRLF",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            Error::InvalidChunkData,
        ),
        (
            "data followed by bare LF",
            b"5\r\nhello\n0\r\n\r\n",
            Error::InvalidChunkData,
        ),
        (
            "data followed by CR only",
            b"5\r\nhello\r0\r\n\r\n",
            Error::InvalidChunkData,
        ),
        (
            "data shorter than size",
            b"5\r\nhell\r\n0\r\n\r\n",
            Error::InvalidChunkData,
        ),
        (
            "data longer than size",
            b"3\r\nhello\r\n0\r\n\r\n",
            Error::InvalidChunkData,
        ),
        ("bare LF ends body", b"0\r\n\n", Error::InvalidTrailer),
        ("CR without LF at end", b"0\r\n\rX", Error::InvalidTrailer),
        (
            "trailer obs-fold",
            b"0\r\nA: b\r\n c\r\n\r\n",
            Error::InvalidTrailer,
        ),
        (
            "trailer leading space",
            b"0\r\n A: b\r\n\r\n",
            Error::InvalidTrailer,
        ),
        (
            "trailer space before colon",
            b"0\r\nA : b\r\n\r\n",
            Error::InvalidTrailer,
        ),
        (
            "trailer no colon",
            b"0\r\nAb\r\n\r\n",
            Error::InvalidTrailer,
        ),
        (
            "trailer empty name",
            b"0\r\n: b\r\n\r\n",
            Error::InvalidTrailer,
        ),
        ("trailer NUL", b"0\r\nA: b\0\r\n\r\n", Error::InvalidTrailer),
        (
            "trailer DEL",
            b"0\r\nA: b\x7f\r\n\r\n",
            Error::InvalidTrailer,
        ),
        ("trailer bare LF", b"0\r\nA: b\n\r\n", Error::InvalidTrailer),
        (
            "trailer CR without LF",
            b"0\r\nA: b\rc\r\n\r\n",
            Error::InvalidTrailer,
        ),
        ("huge size", b"FFFFFFFFFFFFFFFF\r\n", Error::BodyTooLarge),
    ];

    #[test]
    fn rejects_with_exact_error_whole_and_bytewise() {
        for (what, input, want) in REJECT {
            assert_eq!(whole(input), Err(*want), "{what}");
            assert_eq!(
                feed(input, 1, &Limits::default()),
                Err(*want),
                "{what} bytewise"
            );
            assert_eq!(
                want.status(),
                if *want == Error::BodyTooLarge {
                    413
                } else {
                    400
                }
            );
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new(&Limits::default());
        assert_eq!(d.decode(b"x"), Err(Error::InvalidChunkSize));
        assert_eq!(d.decode(b"0\r\n\r\n"), Err(Error::InvalidChunkSize));
        assert!(!d.is_done());
    }

    #[test]
    fn body_limit_across_chunks() {
        let l = Limits {
            max_body: 10,
            ..Limits::default()
        };
        assert!(feed(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 100, &l).is_ok());
        let mut d = ChunkedDecoder::new(&l);
        // 413 decided on the size line, before any data of that chunk.
        assert_eq!(d.decode(b"5\r\nhello\r\n"), Ok((8, Some(&b"hello"[..]))));
        assert_eq!(d.decode(b"\r\n"), Ok((2, None)));
        assert_eq!(d.decode(b"6\r\n"), Err(Error::BodyTooLarge));
        assert_eq!(Error::BodyTooLarge.status(), 413);
    }

    #[test]
    fn extension_limits() {
        let l = Limits::default();
        let mut line = b"1;".to_vec();
        line.resize(1 + 1024, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(
            feed(&line, 64, &l).is_ok(),
            "1024 ext bytes per line is the limit"
        );
        let mut line = b"1;".to_vec();
        line.resize(1 + 1025, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(feed(&line, 64, &l), Err(Error::InvalidChunkExtension));
        // total: 17 lines of 1000 ext bytes
        let mut body = Vec::new();
        for _ in 0..17 {
            body.extend_from_slice(b"1;");
            body.extend(std::iter::repeat_n(b'b', 999));
            body.extend_from_slice(b"\r\nx\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(feed(&body, 100, &l), Err(Error::InvalidChunkExtension));
    }

    #[test]
    fn trailer_limit() {
        let l = Limits {
            max_trailer: 20,
            ..Limits::default()
        };
        // "A: 0123456789012345\r\n" = 21 bytes
        assert_eq!(
            feed(b"0\r\nA: 0123456789012345\r\n\r\n", 4, &l),
            Err(Error::TrailerTooLarge)
        );
        assert!(feed(b"0\r\nA: 012345678901234\r\n\r\n", 4, &l).is_ok());
        assert_eq!(Error::TrailerTooLarge.status(), 431);
    }
}
