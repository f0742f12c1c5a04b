//! RESP2 request parsing and reply encoding.
//!
//! The parser works in place on the connection's read buffer: it returns the byte ranges of
//! a command's arguments, so a pipelined batch is parsed without copying. It tells
//! "incomplete, read more" from "invalid" and bounds every length before trusting it.

use std::ops::Range;

use thiserror::Error;

use crate::log::record::VALUE_BYTES_MAX;

/// Arguments of one command at most (MGET of many keys fits).
pub const ARGUMENTS_MAX: usize = 65_536;
/// A bulk string is at most this long: a maximal value and room to say it is too large.
pub const BULK_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;
/// An inline command or a length line is at most this long.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Why a request cannot be parsed. The connection is answered with it and closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    ArrayLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    LineTooLong,
    #[error("Protocol error: bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("Protocol error: unbalanced quotes in request")]
    Quotes,
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let cr = buf.get(at..)?.iter().position(|&b| b == b'\r')? + at;
        if buf.get(cr + 1) == Some(&b'\n') {
            return Some(cr);
        }
        if cr + 1 >= buf.len() {
            return None;
        }
        at = cr + 1;
    }
}

/// A decimal length as Redis writes them: an optional '-', then digits without leading zeros.
fn parse_decimal(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(digit - b'0');
    }
    Some(if negative { -value } else { value })
}

/// Parses one command from the front of `buf`. On success, `args` holds the ranges of its
/// arguments within `buf` (or, for inline commands with quotes, within `inline`) and the
/// number of bytes consumed is returned; `Ok(None)` means the command is not complete yet.
pub fn parse_command(
    buf: &[u8],
    args: &mut Vec<Range<usize>>,
    inline: &mut Vec<u8>,
) -> Result<Option<(usize, bool)>, ProtocolError> {
    parse_command_sized(buf, args, inline, &mut 0)
}

/// [`parse_command`] that, when the command is not complete, sets `needed_bytes` to the size
/// of `buf` its headers so far call for (through the end of the first bulk string still
/// missing; 0 when not even that is known): the reader can make room for a large value at
/// once instead of growing its buffer step by step.
pub fn parse_command_sized(
    buf: &[u8],
    args: &mut Vec<Range<usize>>,
    inline: &mut Vec<u8>,
    needed_bytes: &mut usize,
) -> Result<Option<(usize, bool)>, ProtocolError> {
    args.clear();
    *needed_bytes = 0;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, args, inline);
    }
    let Some(line_end) = find_crlf(buf, 1) else {
        return if buf.len() > LINE_BYTES_MAX {
            Err(ProtocolError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let count = parse_decimal(&buf[1..line_end]).ok_or(ProtocolError::ArrayLength)?;
    if count > ARGUMENTS_MAX as i64 {
        return Err(ProtocolError::ArrayLength);
    }
    let mut at = line_end + 2;
    if count <= 0 {
        return Ok(Some((at, false)));
    }
    for _ in 0..count {
        let Some(&marker) = buf.get(at) else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker as char));
        }
        let Some(length_end) = find_crlf(buf, at + 1) else {
            return if buf.len() - at > 32 {
                Err(ProtocolError::BulkLength)
            } else {
                Ok(None)
            };
        };
        let length = parse_decimal(&buf[at + 1..length_end]).ok_or(ProtocolError::BulkLength)?;
        if !(0..=BULK_BYTES_MAX as i64).contains(&length) {
            return Err(ProtocolError::BulkLength);
        }
        let start = length_end + 2;
        let end = start + length as usize;
        if buf.len() < end + 2 {
            *needed_bytes = end + 2;
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok(Some((at, false)))
}

/// Inline commands (`PING\r\n`, typed by hand over telnet or `nc`), with double quotes and
/// `\xHH` escapes as redis-cli writes them. Arguments are copied into `inline`.
fn parse_inline(
    buf: &[u8],
    args: &mut Vec<Range<usize>>,
    inline: &mut Vec<u8>,
) -> Result<Option<(usize, bool)>, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > LINE_BYTES_MAX {
            Err(ProtocolError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if newline > LINE_BYTES_MAX {
        return Err(ProtocolError::LineTooLong);
    }
    let mut line = &buf[..newline];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    inline.clear();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let start = inline.len();
        if line[i] == b'"' {
            i += 1;
            loop {
                let Some(&c) = line.get(i) else {
                    return Err(ProtocolError::Quotes);
                };
                match c {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' if line.get(i + 1) == Some(&b'x') && i + 3 < line.len() => {
                        let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok();
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(byte) => {
                                inline.push(byte);
                                i += 4;
                            }
                            None => {
                                inline.push(b'\\');
                                i += 1;
                            }
                        }
                    }
                    b'\\' if i + 1 < line.len() => {
                        let escaped = match line[i + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            other => other,
                        };
                        inline.push(escaped);
                        i += 2;
                    }
                    _ => {
                        inline.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < line.len() && !line[i].is_ascii_whitespace() {
                inline.push(line[i]);
                i += 1;
            }
        }
        args.push(start..inline.len());
        if args.len() > ARGUMENTS_MAX {
            return Err(ProtocolError::ArrayLength);
        }
    }
    Ok(Some((newline + 1, true)))
}

/// Reply encoders, appending to the connection's output buffer.
pub mod reply {
    pub fn simple(out: &mut Vec<u8>, text: &str) {
        out.push(b'+');
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    pub fn ok(out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK\r\n");
    }

    /// An error reply; CR and LF in the text are replaced so the frame stays valid.
    pub fn error(out: &mut Vec<u8>, text: &str) {
        out.push(b'-');
        out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    pub fn integer(out: &mut Vec<u8>, value: i64) {
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
        // One reservation, then copies: this is the hot path of every GET reply.
        let mut digits = itoa::Buffer::new();
        let length = digits.format(data.len()).as_bytes();
        out.reserve(length.len() + data.len() + 5);
        out.push(b'$');
        out.extend_from_slice(length);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    pub fn array(out: &mut Vec<u8>, length: usize) {
        out.push(b'*');
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let mut args = Vec::new();
        let mut inline = Vec::new();
        Ok(
            parse_command(buf, &mut args, &mut inline)?.map(|(_, is_inline)| {
                let source = if is_inline { &inline[..] } else { buf };
                args.iter().map(|r| source[r.clone()].to_vec()).collect()
            }),
        )
    }

    #[test]
    fn arrays_inline_and_incomplete() {
        assert_eq!(
            parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap().unwrap(),
            vec![b"GET".to_vec(), b"k".to_vec()]
        );
        assert_eq!(parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk").unwrap(), None);
        assert_eq!(parse(b"*2\r\n$3\r\nGE").unwrap(), None);
        assert_eq!(parse(b"PING\r\n").unwrap().unwrap(), vec![b"PING".to_vec()]);
        assert_eq!(
            parse(b"SET \"a b\" \"\\x01\\x00\"\n").unwrap().unwrap(),
            vec![b"SET".to_vec(), b"a b".to_vec(), vec![1u8, 0u8]]
        );
        assert_eq!(parse(b"PIN").unwrap(), None);
    }

    #[test]
    fn an_incomplete_value_says_how_much_it_needs() {
        let (mut args, mut inline, mut needed) = (Vec::new(), Vec::new(), 0);
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"abc");
        let parsed = parse_command_sized(&buf, &mut args, &mut inline, &mut needed).unwrap();
        assert_eq!(parsed, None);
        assert_eq!(needed, head.len() + 100_000 + 2);
        // Once that much is there, the command is complete.
        buf.resize(needed - 2, b'v');
        buf.extend_from_slice(b"\r\n");
        let parsed = parse_command_sized(&buf, &mut args, &mut inline, &mut needed).unwrap();
        assert_eq!(parsed, Some((buf.len(), false)));
        // A length line cut short tells nothing yet.
        parse_command_sized(&head[..6], &mut args, &mut inline, &mut needed).unwrap();
        assert_eq!(needed, 0);
    }

    #[test]
    fn invalid_lengths_are_errors() {
        assert_eq!(parse(b"*x\r\n"), Err(ProtocolError::ArrayLength));
        assert_eq!(parse(b"*99999999\r\n"), Err(ProtocolError::ArrayLength));
        assert_eq!(
            parse(b"*1\r\n$999999999999\r\n"),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(parse(b"*1\r\n$-5\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(
            parse(b"*1\r\n:5\r\n"),
            Err(ProtocolError::ExpectedBulk(':'))
        );
        assert_eq!(
            parse(b"*1\r\n$1\r\nabc\r\n"),
            Err(ProtocolError::MissingCrlf)
        );
        assert_eq!(parse(b"GET \"unterminated\r\n"), Err(ProtocolError::Quotes));
        assert_eq!(parse(b"*+1\r\n"), Err(ProtocolError::ArrayLength));
        assert_eq!(
            parse(b"*1\r\n$03\r\nabc\r\n"),
            Err(ProtocolError::BulkLength)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
