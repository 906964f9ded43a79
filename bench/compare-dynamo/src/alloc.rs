//! Process-level meters: a counting global allocator (live heap bytes, switched on only for the
//! memory runs so it costs nothing in the timed ones) and CPU ticks taken by other processes
//! (the machine is shared).

use std::alloc::{GlobalAlloc, Layout};

#[cfg(feature = "mimalloc")]
use mimalloc::MiMalloc as System;
#[cfg(not(feature = "mimalloc"))]
use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The system allocator (mimalloc with `--features mimalloc`), plus a live-bytes counter while [`counting`] is on.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        q
    }
}

/// Switch counting on or off. Only bytes allocated *and* freed while it is on cancel out, so a
/// memory run turns it on before building whatever it later frees.
pub fn counting(on: bool) {
    COUNTING.store(on, Relaxed);
}

pub fn is_counting() -> bool {
    COUNTING.load(Relaxed)
}

/// Net bytes allocated while counting was on.
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

/// CPU seconds used by *other* processes since `since`, per wall second: how busy the shared
/// machine was around a measurement.
pub struct OtherLoad {
    busy: u64,
    mine: u64,
    wall: std::time::Instant,
}

impl OtherLoad {
    pub fn start() -> Self {
        let (busy, mine) = cpu_ticks();
        OtherLoad { busy, mine, wall: std::time::Instant::now() }
    }

    /// Cores' worth of CPU other processes used since `start`.
    pub fn cores(&self) -> f64 {
        let (busy, mine) = cpu_ticks();
        let other = (busy - self.busy) as f64 - (mine - self.mine) as f64;
        (other / 100.0 / self.wall.elapsed().as_secs_f64()).max(0.0)
    }
}

/// (busy ticks of the whole machine, ticks of this process), from /proc (USER_HZ = 100).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    let busy = fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After "(comm) " the fields start at #3 (state); utime and stime are #14 and #15.
    let rest: Vec<&str> = me.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| rest.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (busy, tick(11) + tick(12))
}
