//! x86-64 decoding used to verify a hook point before anyone attaches to it: a uprobe
//! placed in the middle of an instruction corrupts the traced program, so every entry must
//! decode as a plausible function start and every return site must be an instruction
//! boundary found by decoding the whole function from its entry.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};

/// How many instructions from an entry must decode cleanly.
const ENTRY_INSTRUCTIONS: usize = 4;

/// True when the bytes at `vaddr` start like a function: the first instructions decode,
/// none is padding (`int3`, `nop` runs, zero bytes) or a trap, and the first one does not
/// jump back before the entry.
pub(crate) fn plausible_entry(code: &[u8], vaddr: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut seen = 0;
    while decoder.can_decode() && seen < ENTRY_INSTRUCTIONS {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() || is_padding_or_trap(&instr) {
            return false;
        }
        // A tail-call stub (`jmp elsewhere`) is a valid function, but stop looking there.
        if matches!(
            instr.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::Return
        ) {
            return true;
        }
        seen += 1;
    }
    seen == ENTRY_INSTRUCTIONS
}

fn is_padding_or_trap(instr: &Instruction) -> bool {
    matches!(
        instr.mnemonic(),
        Mnemonic::Int3 | Mnemonic::Ud2 | Mnemonic::Hlt | Mnemonic::Int1
    ) || (instr.code() == Code::Add_rm8_r8 && instr.len() == 2) // 00 00: zero fill
}

/// Decodes `code` (one whole function starting at `vaddr`) linearly and returns the address
/// of every `RET`. Fails if any byte sequence does not decode or the last instruction runs
/// past the function's end: then the bounds are wrong and no site can be trusted.
///
/// Linear decoding is exact for Go on amd64: the Go toolchain puts no data in `.text`
/// functions, only `int3` padding after the last instruction.
pub(crate) fn return_sites(code: &[u8], vaddr: u64) -> Result<Vec<u64>, String> {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut rets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return Err(format!("undecodable bytes at {:#x}", instr.ip()));
        }
        match instr.mnemonic() {
            Mnemonic::Ret => rets.push(instr.ip()),
            Mnemonic::Retf | Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => {
                return Err(format!("far/interrupt return at {:#x}", instr.ip()));
            }
            _ => {}
        }
    }
    // `can_decode` turns false at the end of the slice; a cut-off last instruction decodes
    // as invalid above, so reaching here means the function ends on a boundary.
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normal_prologue_is_an_entry_and_padding_is_not() {
        // push rbp; mov rbp,rsp; push r15; push r14; …
        let prologue = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x53];
        assert!(plausible_entry(&prologue, 0x1000));
        assert!(!plausible_entry(&[0xcc; 16], 0x1000));
        assert!(!plausible_entry(&[0u8; 16], 0x1000));
        // Too short to show four instructions.
        assert!(!plausible_entry(&[0x55], 0x1000));
        // A tail-call stub is fine.
        assert!(plausible_entry(&[0xe9, 0, 0, 0, 0], 0x1000));
    }

    #[test]
    fn return_sites_are_found_on_instruction_boundaries() {
        // mov eax,0xc3c3c3c3 (its immediate holds RET bytes); ret; xor eax,eax; ret; int3
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x31, 0xc0, 0xc3, 0xcc];
        assert_eq!(return_sites(&code, 0x2000).unwrap(), vec![0x2005, 0x2008]);
        // Cut inside the `mov`: the bounds are wrong, nothing is trusted.
        assert!(return_sites(&code[..3], 0x2000).is_err());
    }
}
