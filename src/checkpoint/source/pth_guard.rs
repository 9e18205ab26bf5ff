//! A guard in front of candle's `.pth` reader, which trusts the lengths written in the file: a
//! string length or a tensor shape taken from a hostile file would make it allocate gigabytes
//! before noticing the data is not there. Every length is checked here against the bytes that
//! really follow, before candle reads anything.

use std::io::{Cursor, Read};

/// Checks the zip container and every `data.pkl` in it: no entry claims more bytes than the
/// file holds, and every length-prefixed pickle argument fits in what remains of its pickle.
pub(super) fn check_container(bytes: &[u8]) -> Result<(), String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a readable zip archive: {e}"))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        let name = entry.name().map_err(|e| format!("entry {i}: {e}"))?.into_owned();
        if entry.size() > bytes.len() as u64 {
            return Err(format!(
                "{name} claims {} bytes, more than the whole file ({})",
                entry.size(),
                bytes.len()
            ));
        }
        if name.ends_with("data.pkl") {
            let mut pickle = Vec::new();
            (&mut entry)
                .take(bytes.len() as u64)
                .read_to_end(&mut pickle)
                .map_err(|e| format!("{name}: {e}"))?;
            scan_pickle(&pickle).map_err(|m| format!("{name}: {m}"))?;
        }
    }
    Ok(())
}

/// Walks a pickle's opcodes without executing any: each argument must fit in the bytes left,
/// and every opcode must be one of pickle's (protocols 0 to 5). Returns the pickle's length,
/// up to and including its STOP opcode (bytes after it belong to whatever follows).
pub(super) fn scan_pickle(pickle: &[u8]) -> Result<usize, String> {
    let mut at = 0usize;
    while at < pickle.len() {
        let (op, start) = (pickle[at], at);
        let fail = |what: String| format!("opcode {op:#04x} at byte {start}: {what}");
        // The end of `len` bytes of argument starting at `from`, if they are there.
        let take = |from: usize, len: u64| match usize::try_from(len).ok().and_then(|l| from.checked_add(l)) {
            Some(end) if end <= pickle.len() => Ok(end),
            _ => Err(fail(format!(
                "claims {len} bytes, but {} remain",
                pickle.len().saturating_sub(from)
            ))),
        };
        at += 1;
        at = match op {
            b'.' => return Ok(at),
            // No argument.
            b'('
            | b'0'
            | b'1'
            | b'2'
            | b'N'
            | b'R'
            | b'a'
            | b'b'
            | b'd'
            | b'}'
            | b'e'
            | b'l'
            | b']'
            | b'o'
            | b's'
            | b't'
            | b')'
            | b'u'
            | b'Q'
            | 0x81
            | 0x85..=0x89
            | 0x8f..=0x94
            | 0x97
            | 0x98 => at,
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 | 0x82 => take(at, 1)?,
            b'M' | 0x83 => take(at, 2)?,
            b'J' | b'j' | b'r' | 0x84 => take(at, 4)?,
            b'G' | 0x95 => take(at, 8)?,
            // One line (two for GLOBAL and INST), each ending in a newline.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' | b'c' | b'i' => {
                let lines = if matches!(op, b'c' | b'i') { 2 } else { 1 };
                let mut end = at;
                for _ in 0..lines {
                    let nl = pickle[end..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| fail("no end of line".into()))?;
                    end += nl + 1;
                }
                end
            }
            // A length of 1, 4 or 8 little-endian bytes, then that many bytes.
            b'U' | b'C' | 0x8c | 0x8a | b'T' | b'X' | b'B' | 0x8b | 0x8d | 0x8e | 0x96 => {
                let width = match op {
                    b'U' | b'C' | 0x8c | 0x8a => 1,
                    b'T' | b'X' | b'B' | 0x8b => 4,
                    _ => 8,
                };
                let bytes = pickle
                    .get(at..at + width)
                    .ok_or_else(|| fail("truncated".into()))?;
                let len = bytes.iter().rev().fold(0u64, |v, &b| v << 8 | b as u64);
                // No tensor field needs an integer wider than 64 bits, and the reader's
                // arithmetic stops there.
                if op == 0x8a && len > 8 {
                    return Err(fail(format!("an integer of {len} bytes")));
                }
                take(at + width, len)?
            }
            _ => return Err(format!("not a pickle: unknown opcode {op:#04x} at byte {start}")),
        };
    }
    Err("the pickle ends without its STOP opcode".into())
}

#[cfg(test)]
mod tests {
    use super::scan_pickle;

    #[test]
    fn lengths_beyond_the_pickle_are_refused() {
        // PROTO 2, EMPTY_DICT, STOP.
        assert_eq!(scan_pickle(b"\x80\x02}."), Ok(4));
        // Bytes after STOP are not part of the pickle.
        assert_eq!(scan_pickle(b"\x80\x02}.junk"), Ok(4));
        // BINUNICODE claiming 4 GiB with 3 bytes left.
        let err = scan_pickle(b"\x80\x02X\xff\xff\xff\xffabc.").unwrap_err();
        assert_eq!(
            err,
            "opcode 0x58 at byte 2: claims 4294967295 bytes, but 4 remain"
        );
        // SHORT_BINUNICODE that fits, then the end without STOP.
        assert_eq!(
            scan_pickle(b"\x8c\x02ab").unwrap_err(),
            "the pickle ends without its STOP opcode"
        );
        assert!(scan_pickle(b"\xff").unwrap_err().contains("unknown opcode 0xff"));
        // GLOBAL takes two lines.
        assert_eq!(scan_pickle(b"ctorch\nFloatStorage\n."), Ok(21));
        assert!(scan_pickle(b"\x8a\x0a0123456789.")
            .unwrap_err()
            .contains("an integer of 10 bytes"));
        assert!(scan_pickle(b"ctorch\nFloat")
            .unwrap_err()
            .contains("no end of line"));
    }
}
