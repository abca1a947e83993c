//! The only module besides the engine's ring that talks to the kernel through raw file
//! descriptors: eventfds, kernel and rlimit probes, and small socket calls on raw fds.
//!
//! Everything here is a thin, documented wrapper; callers above never see `libc`.

use std::{
    io,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use crate::error::{Error, Result};

/// Oldest kernel percore runs on: io_uring's DEFER_TASKRUN arrived in 6.1.
pub const MIN_KERNEL: (u32, u32) = (6, 1);

/// Smallest RLIMIT_MEMLOCK glommio can start with (its rings and registered buffers are locked).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Checks the kernel version and the memlock limit; the error is one line that says what to change.
pub fn check_system() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some((maj, min)) = parse_release(release.trim()) {
        if (maj, min) < MIN_KERNEL {
            return Err(Error::Unsupported(format!(
                "kernel {} is too old: percore needs Linux >= {}.{} (io_uring DEFER_TASKRUN)",
                release.trim(),
                MIN_KERNEL.0,
                MIN_KERNEL.1
            )));
        }
    }
    if let Some(cur) = soft_limit(libc::RLIMIT_MEMLOCK) {
        if cur != libc::RLIM_INFINITY && cur < MIN_MEMLOCK {
            return Err(Error::Unsupported(format!(
                "RLIMIT_MEMLOCK is {} KiB: percore needs >= {} KiB (ulimit -l, systemd LimitMEMLOCK=)",
                cur / 1024,
                MIN_MEMLOCK / 1024
            )));
        }
    }
    Ok(())
}

/// The soft limit of `resource` (`RLIM_INFINITY` when unlimited), `None` if it cannot be read.
fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// The soft `RLIMIT_NOFILE`: how many descriptors the process may hold (`None` if unreadable).
pub fn open_files_limit() -> Option<u64> {
    soft_limit(libc::RLIMIT_NOFILE)
}

/// The soft limits that matter to a server, for its start-up log line: `RLIMIT_MEMLOCK` (glommio's
/// rings) and `RLIMIT_NOFILE` (one descriptor per connection), e.g. `memlock 8192 KiB, nofile
/// 20000`.
pub fn limits_summary() -> String {
    let show = |v: Option<u64>, unit: u64, suffix: &str| match v {
        None => "unknown".to_string(),
        Some(libc::RLIM_INFINITY) => "unlimited".to_string(),
        Some(v) => format!("{}{suffix}", v / unit),
    };
    format!(
        "memlock {}, nofile {}",
        show(soft_limit(libc::RLIMIT_MEMLOCK), 1024, " KiB"),
        show(soft_limit(libc::RLIMIT_NOFILE), 1, "")
    )
}

fn parse_release(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let maj = it.next()?.parse().ok()?;
    let min = it.next()?.parse().ok()?;
    Some((maj, min))
}

/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (`linux/membarrier.h`).
const MEMBARRIER_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
const MEMBARRIER_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;

/// Registers the process for private expedited `membarrier(2)`, which glommio issues before every
/// sleep of an executor and registers for lazily, on the first sleep in the process.
///
/// Registering waits for an RCU grace period once the process has more than one thread: 5–17 ms
/// on an idle 2-CPU VM, and 2–3 s when the machine was oversubscribed, during which the first
/// executor to sleep (and every other, behind glommio's one-time initialisation) stood still.
/// A load generator's executors first sleep after its clock has started, so that wait went into
/// the measurement (a test's generator sent nothing for 2.9 s). Called before the shard threads
/// exist, the registration is free in a process that has one thread, and otherwise paid during
/// start-up. Best effort: without `membarrier` glommio falls back on its own.
pub fn register_membarrier() {
    // SAFETY: membarrier takes two integers and no pointers.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_REGISTER_PRIVATE_EXPEDITED,
            0 as libc::c_int,
        )
    };
}

/// Whether the process may issue private expedited membarriers (it registered for them). Issues
/// one, which interrupts every CPU that runs a thread of this process: for checks, not hot paths.
pub fn membarrier_registered() -> bool {
    // SAFETY: membarrier takes two integers and no pointers; an unregistered process gets EPERM.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_PRIVATE_EXPEDITED,
            0 as libc::c_int,
        ) == 0
    }
}

/// Creates an eventfd (close-on-exec, blocking reads so an io_uring read waits for a signal).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a negative return is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whoever waits on it. Safe from any thread.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; the fd is an eventfd owned by a live shard (a
    // closed fd makes the write fail with EBADF, which is harmless here).
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Closes a raw fd that the engine owns.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and no operation refers to it any more.
    unsafe { libc::close(fd) };
}

/// The peer address of a connected socket.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut storage: libc::sockaddr_storage = unsafe_zeroed_storage();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `len` bytes of a sockaddr_storage.
    let addr = unsafe { socket2::SockAddr::new(storage, len) };
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an inet socket"))
}

fn unsafe_zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Sets TCP_NODELAY on a raw socket fd.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads TCP_NODELAY of a raw socket fd (tests check that accepted sockets inherit it).
pub fn nodelay(fd: RawFd) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pointers to a live c_int and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v != 0)
}

/// Half- or fully shuts down a socket (`how` is `libc::SHUT_*`).
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: no pointers; an invalid fd only yields an error we ignore.
    unsafe { libc::shutdown(fd, how) };
}

/// CPU time (user + system) on the CPU-time clock `clock` (`CLOCK_THREAD_CPUTIME_ID`, or a
/// thread's clock from `pthread_getcpuclockid`); `None` once that thread is gone.
pub fn cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock id only makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time the whole process has used (all threads, user and system).
pub fn process_cpu() -> Option<Duration> {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// Asks the allocator to give free heap memory back to the system (glibc's `malloc_trim`:
/// every arena's free pages, not only the top of each heap). Other allocators return memory on
/// their own; elsewhere this does nothing.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu takes no arguments.
    let c = unsafe { libc::sched_getcpu() };
    c.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v857"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_machine_is_supported() {
        check_system().unwrap();
    }
}
