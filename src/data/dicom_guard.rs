//! A pass over a DICOM file's declared lengths before the parser sees it. dicom-parser reserves
//! each element's declared length before reading it, so one corrupt length field would allocate
//! gigabytes for a file of kilobytes; here every length must fit in the bytes that follow.

use anyhow::{Result, bail};

const UNDEFINED: u32 = 0xFFFF_FFFF;
/// VRs with a 2-byte length in explicit VR; every other VR, an unknown one too (read as UN, as
/// dicom-parser does), has a 2-byte reserved field and a 4-byte length.
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI",
    b"UL", b"US",
];

struct Reader<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> u16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        if self.big { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }
    }
    fn u32(&self, at: usize) -> u32 {
        let b = [self.bytes[at], self.bytes[at + 1], self.bytes[at + 2], self.bytes[at + 3]];
        if self.big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    }
    /// Whether a value starting at `at` begins with an item tag: a sequence, whatever its VR says.
    fn starts_item(&self, at: usize) -> bool {
        at + 4 <= self.bytes.len() && self.u16(at) == 0xFFFE && self.u16(at + 2) == 0xE000
    }
}

/// Checks every element length of the file's meta group and data set; returns the transfer
/// syntax UID and the pixel data's declared length (None when encapsulated or absent).
pub fn check_lengths(bytes: &[u8]) -> Result<(String, Option<u64>)> {
    let mut pos = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" { 132 } else { 0 };
    let meta = Reader { bytes, big: false };
    let mut ts = String::new();
    while pos + 8 <= bytes.len() && meta.u16(pos) == 0x0002 {
        let (len, header) = explicit_length(&meta, pos)?;
        let start = pos + header;
        fits(bytes.len(), start, len, meta.u16(pos), meta.u16(pos + 2))?;
        if meta.u16(pos + 2) == 0x0010 {
            ts = String::from_utf8_lossy(&bytes[start..start + len as usize]).trim_end_matches(['\0', ' ']).to_string();
        }
        pos = start + len as usize;
    }
    if ts == "1.2.840.10008.1.2.1.99" {
        return Ok((ts, None)); // deflated data set: the inflater bounds itself
    }
    let implicit = ts == "1.2.840.10008.1.2" || ts.is_empty();
    let r = Reader { bytes, big: ts == "1.2.840.10008.1.2.2" };
    let pixels = walk(&r, pos, implicit)?;
    Ok((ts, pixels))
}

/// The value length and header size of an explicit-VR element at `pos`.
fn explicit_length(r: &Reader<'_>, pos: usize) -> Result<(u32, usize)> {
    let vr = [r.bytes[pos + 4], r.bytes[pos + 5]];
    if SHORT_VRS.contains(&&vr) {
        Ok((r.u16(pos + 6) as u32, 8))
    } else {
        if pos + 12 > r.bytes.len() {
            bail!("truncated element header at byte {pos}");
        }
        Ok((r.u32(pos + 8), 12))
    }
}

fn fits(total: usize, start: usize, len: u32, group: u16, element: u16) -> Result<()> {
    let left = total.saturating_sub(start);
    if len != UNDEFINED && len as usize > left {
        bail!("element ({group:04X},{element:04X}) declares {len} bytes but only {left} remain: the file is corrupt or truncated");
    }
    Ok(())
}

fn walk(r: &Reader<'_>, mut pos: usize, implicit: bool) -> Result<Option<u64>> {
    let end = r.bytes.len();
    let mut pixels = None;
    while pos + 8 <= end {
        let (group, element) = (r.u16(pos), r.u16(pos + 2));
        if group == 0xFFFE {
            // Item or delimiter: the item's contents are elements, walked in place.
            fits(end, pos + 8, r.u32(pos + 4), group, element)?;
            pos += 8;
            continue;
        }
        let (len, header, vr) = if implicit {
            (r.u32(pos + 4), 8, None)
        } else {
            let (len, header) = explicit_length(r, pos)?;
            (len, header, Some([r.bytes[pos + 4], r.bytes[pos + 5]]))
        };
        pos += header;
        let is_pixels = (group, element) == (0x7FE0, 0x0010);
        if len == UNDEFINED {
            if is_pixels {
                pos = skip_fragments(r, pos)?;
            }
            continue;
        }
        fits(end, pos, len, group, element)?;
        if is_pixels {
            pixels = Some(len as u64);
        }
        let sequence = vr == Some(*b"SQ") || r.starts_item(pos);
        if !sequence {
            pos += len as usize;
        }
    }
    Ok(pixels)
}

/// Encapsulated pixel data: fragments (items) up to the sequence delimiter.
fn skip_fragments(r: &Reader<'_>, mut pos: usize) -> Result<usize> {
    let end = r.bytes.len();
    while pos + 8 <= end {
        let (group, element, len) = (r.u16(pos), r.u16(pos + 2), r.u32(pos + 4));
        pos += 8;
        match (group, element) {
            (0xFFFE, 0xE0DD) => return Ok(pos),
            (0xFFFE, 0xE000) if len != UNDEFINED => {
                fits(end, pos, len, group, element)?;
                pos += len as usize;
            }
            _ => bail!("pixel data fragment expected at byte {}, found ({group:04X},{element:04X})", pos - 8),
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_length_is_caught_and_a_valid_file_passes() {
        // Explicit VR little endian meta with one data element after it.
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        f.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        f.extend_from_slice(ts);
        f.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 4, 0]);
        f.extend_from_slice(b"A^B ");
        f.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(check_lengths(&f).unwrap(), ("1.2.840.10008.1.2.1".to_string(), Some(4)));
        let n = f.len();
        f[n - 8..n - 4].copy_from_slice(&0x7000_0000u32.to_le_bytes());
        let e = check_lengths(&f).unwrap_err().to_string();
        assert!(e.contains("(7FE0,0010) declares 1879048192 bytes"), "{e}");
    }
}
