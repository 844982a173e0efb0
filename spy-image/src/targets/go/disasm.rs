//! Finds every return instruction of a function with capstone.
//!
//! Go functions must never get a uretprobe: the kernel rewrites the return
//! address on the stack, and the Go runtime, which copies and walks stacks,
//! then crashes the target. So each RET gets an entry-style uprobe instead.

use capstone::arch::arm64::{ArchMode as Arm64Mode, Arm64Insn};
use capstone::arch::x86::{ArchMode as X86Mode, X86Insn};
use capstone::prelude::*;
use capstone::{Capstone, InsnId};

use super::GoArch;

/// Bounds the work on one function: more than one instruction per byte is
/// impossible, so a well-formed input never reaches it.
const MAX_INSTRUCTIONS: usize = 1 << 20;

/// Disassembler set up for one architecture, reusable across functions.
pub(crate) struct RetScanner {
    cs: Capstone,
    ret_id: InsnId,
}

impl RetScanner {
    pub fn new(arch: GoArch) -> Result<Self, capstone::Error> {
        let mut cs = match arch {
            GoArch::Amd64 => Capstone::new().x86().mode(X86Mode::Mode64).build()?,
            GoArch::Arm64 => Capstone::new().arm64().mode(Arm64Mode::Arm).build()?,
        };
        // Bytes that decode to nothing (padding, arm64 literal pools) become
        // one-unit `.byte` pseudo-instructions instead of ending the scan.
        cs.set_skipdata(true)?;
        let ret_id = match arch {
            // `ret` and `ret imm16` share one id.
            GoArch::Amd64 => InsnId(X86Insn::X86_INS_RET as u32),
            GoArch::Arm64 => InsnId(Arm64Insn::ARM64_INS_RET as u32),
        };
        Ok(RetScanner { cs, ret_id })
    }

    /// Addresses of every RET in `code`, which starts at `address`.
    pub fn returns(&self, code: &[u8], address: u64) -> Result<Vec<u64>, capstone::Error> {
        let mut iter = self.cs.disasm_iter(code, address)?;
        let mut rets = Vec::new();
        let mut count = 0usize;
        while let Some(insn) = iter.next() {
            if insn.id() == self.ret_id {
                rets.push(insn.address());
            }
            count += 1;
            if count >= MAX_INSTRUCTIONS {
                break;
            }
        }
        Ok(rets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_amd64_ret_and_ret_imm_but_not_c3_inside_other_instructions() {
        let scanner = RetScanner::new(GoArch::Amd64).expect("capstone");
        // mov eax, 0xc3c3c3c3 ; ret ; int3 ; ret 8 ; nop
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc, 0xc2, 0x08, 0x00, 0x90];
        assert_eq!(scanner.returns(&code, 0x1000).expect("disasm"), vec![0x1005, 0x1007]);
    }

    #[test]
    fn finds_arm64_ret_past_undecodable_words() {
        let scanner = RetScanner::new(GoArch::Arm64).expect("capstone");
        let mut code = Vec::new();
        code.extend_from_slice(&0xd503201fu32.to_le_bytes()); // nop
        code.extend_from_slice(&0x00000000u32.to_le_bytes()); // udf / literal pool word
        code.extend_from_slice(&0xd65f03c0u32.to_le_bytes()); // ret
        code.extend_from_slice(&0xffffffffu32.to_le_bytes()); // garbage
        code.extend_from_slice(&0xd65f03c0u32.to_le_bytes()); // ret
        assert_eq!(scanner.returns(&code, 0x2000).expect("disasm"), vec![0x2008, 0x2010]);
    }

    #[test]
    fn empty_and_garbage_code_yield_no_returns() {
        let scanner = RetScanner::new(GoArch::Amd64).expect("capstone");
        assert!(scanner.returns(&[], 0).expect("disasm").is_empty());
        assert!(scanner.returns(&[0x0f; 64], 0).expect("disasm").is_empty());
    }
}
