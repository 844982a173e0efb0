//! The floor: no-op probes on exactly the spy's probe points, and the
//! measured cost of one probe hit on this machine.

use std::path::Path;

use aya::maps::PerCpuArray;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;
use spy_image::targets::go::GoBinary;
use spy_image::targets::tls_stack::OpensslProbes;

/// The floor's programs (`spy-ebpf/bpf/floor.bpf.c`).
const ENTER: &str = "floor_enter";
const RETURN: &str = "floor_return";
const RET_SITE: &str = "floor_ret_site";

pub struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    /// Entry and return probes on every function the spy would probe.
    pub fn attach(library: &Path, probes: &OpensslProbes) -> anyhow::Result<Floor> {
        let mut floor = Floor::load()?;
        for &(_, offset) in &probes.offsets {
            floor.attach_at(library, offset, &[ENTER, RETURN])?;
        }
        Ok(floor)
    }

    /// Go: an entry uprobe on `crypto/tls.(*Conn).Write` and `.Read` and a
    /// uprobe on each of their RET instructions, at the offsets the spy's
    /// own analysis found (never a uretprobe, as the spy).
    pub fn attach_go(executable: &Path, binary: &GoBinary) -> anyhow::Result<Floor> {
        let mut floor = Floor::load()?;
        for function in [&binary.write, &binary.read] {
            floor.attach_at(executable, function.entry_file_offset, &[ENTER])?;
            for &ret in &function.ret_file_offsets {
                floor.attach_at(executable, ret, &[RET_SITE])?;
            }
        }
        Ok(floor)
    }

    fn load() -> anyhow::Result<Floor> {
        let mut ebpf = Ebpf::load(spy_ebpf::FLOOR_OBJECT)?;
        for name in [ENTER, RETURN, RET_SITE] {
            let program: &mut UProbe =
                ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name}"))?.try_into()?;
            program.load()?;
        }
        Ok(Floor { ebpf })
    }

    fn attach_at(&mut self, path: &Path, offset: u64, programs: &[&str]) -> anyhow::Result<()> {
        for name in programs {
            let program: &mut UProbe =
                self.ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no {name}"))?.try_into()?;
            program.attach(UProbeAttachLocation::AbsoluteOffset(offset), path, UProbeScope::AllProcesses)?;
        }
        Ok(())
    }

    /// (entry hits, return hits) so far.
    pub fn hits(&mut self) -> (u64, u64) {
        let Some(map) = self.ebpf.map_mut("floor_hits") else { return (0, 0) };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return (0, 0) };
        let sum = |i: u32| array.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        (sum(0), sum(1))
    }
}

/// A function that does almost nothing, to be probed.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tlsspy_bench_nop(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_add(1)
}

/// Nanoseconds per call of a near-empty function: bare, under a no-op entry
/// probe, and under entry and return probes.
#[derive(Clone, Copy, Debug)]
pub struct HitCost {
    pub bare_ns: f64,
    pub entry_ns: f64,
    pub entry_and_return_ns: f64,
}

pub fn measure_hit_cost() -> anyhow::Result<HitCost> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let data = std::fs::read(&exe)?;
    let file = object::File::parse(&*data)?;
    let address = object::Object::symbols(&file)
        .find(|s| object::ObjectSymbol::name(s) == Ok("tlsspy_bench_nop"))
        .map(|s| object::ObjectSymbol::address(&s))
        .ok_or_else(|| anyhow::anyhow!("tlsspy_bench_nop not found in {}", exe.display()))?;
    let offset = spy_image::targets::tls_stack::file_offset(&file, address)
        .ok_or_else(|| anyhow::anyhow!("tlsspy_bench_nop is in no loadable segment"))?;

    let time = |calls: u64| {
        let start = std::time::Instant::now();
        let mut x = 0;
        for _ in 0..calls {
            x = tlsspy_bench_nop(x);
        }
        std::hint::black_box(x);
        start.elapsed().as_nanos() as f64 / calls as f64
    };
    let bare_ns = time(2_000_000);
    let entry_ns = {
        let mut floor = Floor::load()?;
        floor.attach_at(&exe, offset, &[ENTER])?;
        time(20_000)
    };
    let entry_and_return_ns = {
        let mut floor = Floor::load()?;
        floor.attach_at(&exe, offset, &[ENTER, RETURN])?;
        time(20_000)
    };
    Ok(HitCost { bare_ns, entry_ns, entry_and_return_ns })
}
