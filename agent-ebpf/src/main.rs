//! Custody's kernel programs. Built for `bpfel-unknown-none` by agent-user's build.rs;
//! on the host this binary is an empty stub so workspace-wide tools still work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic, so this is dead code.
    unsafe { core::hint::unreachable_unchecked() }
}

/// `bpf_probe_read_kernel` and `bpf_send_signal` need a GPL-compatible licence.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
