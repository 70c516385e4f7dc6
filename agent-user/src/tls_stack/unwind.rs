//! Function starts from the unwind table's index (`.eh_frame_hdr`): in a stripped C/C++
//! binary it is the one trustworthy list of where functions begin, because the unwinder
//! (C++ exceptions, backtraces) needs it and `strip` keeps it. A candidate hook point that
//! is not one of these starts is not attached to.
//!
//! Only the encoding every x86-64 linker emits is read (table `DW_EH_PE_datarel|sdata4`,
//! count `udata4`); anything else is reported as unsupported rather than guessed at.

use super::elf::Image;

const DW_EH_PE_UDATA4: u8 = 0x03;
const DW_EH_PE_DATAREL_SDATA4: u8 = 0x3b;

/// Sorted function start addresses; a function ends where the next one starts.
pub(crate) struct FunctionStarts {
    starts: Vec<u64>,
}

impl FunctionStarts {
    pub fn from_image(image: &Image) -> Result<Self, String> {
        let hdr = image
            .section(".eh_frame_hdr")
            .ok_or("no .eh_frame_hdr section")?;
        Self::parse(image.section_bytes(&hdr), hdr.vaddr)
    }

    pub fn parse(data: &[u8], hdr_vaddr: u64) -> Result<Self, String> {
        if data.len() < 12 || data[0] != 1 {
            return Err("eh_frame_hdr too short or not version 1".into());
        }
        let (ptr_enc, count_enc, table_enc) = (data[1], data[2], data[3]);
        if count_enc != DW_EH_PE_UDATA4 || table_enc != DW_EH_PE_DATAREL_SDATA4 {
            return Err(format!(
                "eh_frame_hdr encodings {ptr_enc:#x}/{count_enc:#x}/{table_enc:#x} not supported"
            ));
        }
        // eh_frame_ptr is 4 bytes in every encoding we accept (pcrel/datarel sdata4/udata4).
        if ptr_enc & 0x0f != 0x0b && ptr_enc & 0x0f != 0x03 {
            return Err(format!("eh_frame_ptr encoding {ptr_enc:#x} not supported"));
        }
        let count = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
        let table = &data[12..];
        if count.checked_mul(8).is_none_or(|n| n > table.len()) {
            return Err(format!("eh_frame_hdr claims {count} entries, holds fewer"));
        }
        let mut starts = Vec::with_capacity(count);
        for entry in table.chunks_exact(8).take(count) {
            let rel = i32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
            starts.push(hdr_vaddr.wrapping_add_signed(rel as i64));
        }
        if starts.windows(2).any(|w| w[0] > w[1]) {
            return Err("eh_frame_hdr table not sorted".into());
        }
        Ok(FunctionStarts { starts })
    }

    /// The function containing `addr`: its start and the next function's start (or `None`
    /// for the last one).
    pub fn containing(&self, addr: u64) -> Option<(u64, Option<u64>)> {
        let i = self.starts.partition_point(|&s| s <= addr).checked_sub(1)?;
        Some((self.starts[i], self.starts.get(i + 1).copied()))
    }

    pub fn is_start(&self, addr: u64) -> bool {
        self.starts.binary_search(&addr).is_ok()
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(entries: &[(i32, i32)], claimed: u32) -> Vec<u8> {
        let mut d = vec![1, 0x1b, DW_EH_PE_UDATA4, DW_EH_PE_DATAREL_SDATA4];
        d.extend_from_slice(&0i32.to_le_bytes());
        d.extend_from_slice(&claimed.to_le_bytes());
        for (a, b) in entries {
            d.extend_from_slice(&a.to_le_bytes());
            d.extend_from_slice(&b.to_le_bytes());
        }
        d
    }

    #[test]
    fn starts_are_relative_to_the_header_and_lookups_bound_a_function() {
        let t = FunctionStarts::parse(&hdr(&[(-0x100, 0), (-0x80, 0)], 2), 0x1000).unwrap();
        assert_eq!(t.containing(0xf40), Some((0xf00, Some(0xf80))));
        assert_eq!(t.containing(0xf90), Some((0xf80, None)));
        assert_eq!(t.containing(0xf80), Some((0xf80, None)));
        assert_eq!(t.containing(0xe00), None);
        assert!(t.is_start(0xf80) && !t.is_start(0xf81));
    }

    #[test]
    fn a_lying_count_or_unsorted_table_is_an_error() {
        assert!(FunctionStarts::parse(&hdr(&[(0, 0)], 1000), 0x1000).is_err());
        assert!(FunctionStarts::parse(&hdr(&[(8, 0), (0, 0)], 2), 0x1000).is_err());
        assert!(FunctionStarts::parse(&[1, 2], 0).is_err());
    }
}
