//! Wakes when a file may have changed: inotify on the file's folder, so that every way a file is
//! replaced is seen — written in place, renamed over (editors, `mv`), or a Kubernetes ConfigMap's
//! `..data` symlink swapped — without polling. A wake only says "look again": the caller re-reads the
//! file and compares.

use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// Why a folder cannot be watched (the caller falls back to polling).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("inotify: {0}")]
    Inotify(#[from] nix::Error),
    #[error("inotify in the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A watch on the folder of one file.
pub struct FileWatch {
    fd: AsyncFd<Watched>,
    /// The file's name in its folder: events about other files are not its changes (a log written
    /// next to the config would otherwise wake the reloader at every flush).
    name: std::ffi::OsString,
}

impl FileWatch {
    /// Whether an event may be a change of the file: its own name, the folder itself, or a name of
    /// Kubernetes' ConfigMap machinery (`..data`, `..2026_…`) through which the file is a link.
    fn concerns(&self, event: &nix::sys::inotify::InotifyEvent) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match &event.name {
            None => true,
            Some(n) => n == &self.name || n.as_bytes().starts_with(b".."),
        }
    }
}

/// The inotify instance as the runtime polls it (nix gives it `AsFd`; Tokio asks for `AsRawFd`).
struct Watched(Inotify);

impl std::os::fd::AsRawFd for Watched {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl FileWatch {
    /// Watches the folder that holds `path` (must run inside a Tokio runtime).
    pub fn new(path: &Path) -> Result<FileWatch, WatchError> {
        let name = path.file_name().unwrap_or_default().to_os_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // Not IN_MODIFY: a write is looked at once its writer closes the file (IN_CLOSE_WRITE; a
        // rename over it is IN_MOVED_TO). The kernel cannot filter a folder's events by name, and a
        // file kept open and written next to the config — the access log, flushed every 20 ms under
        // load — woke this thread at every flush (~50 times a second, seen in the `login` scenario)
        // only for `changed` to drop the event.
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF,
        )?;
        // `AsyncFd::new` is deprecated because a caller could close or replace the fd while it is
        // registered; `Watched` owns its inotify instance and never gives it up, and `register`, the
        // replacement, is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Watched(inotify))?;
        Ok(FileWatch { fd, name })
    }

    /// Resolves once something in the folder changed (all events pending then are consumed).
    pub async fn changed(&self) -> Result<(), WatchError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut relevant = false;
            // Drain what is queued: one look covers every event about the file.
            loop {
                match guard.get_inner().0.read_events() {
                    Ok(events) if !events.is_empty() => {
                        relevant |= events.iter().any(|e| self.concerns(e));
                    }
                    Ok(_) | Err(nix::Error::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            guard.clear_ready();
            if relevant {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writes_renames_and_symlink_swaps_wake_the_watch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "a").expect("write");
        let watch = FileWatch::new(&path).expect("watch");
        async fn woke(w: &FileWatch) -> bool {
            tokio::time::timeout(Duration::from_secs(10), w.changed())
                .await
                .is_ok_and(|r| r.is_ok())
        }
        // Nothing changed: no wake.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), watch.changed())
                .await
                .is_err()
        );
        // Another file in the folder (a log next to the config): not a change of it.
        std::fs::write(dir.path().join("access.log"), "line").expect("write a neighbour");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.changed())
                .await
                .is_err()
        );
        // A neighbour kept open and written to (a log being flushed) does not even wake the watch:
        // no event reaches the inotify instance, so its thread sleeps.
        {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("access.log"))
                .expect("open the neighbour");
            for _ in 0..5 {
                log.write_all(b"another line\n").expect("append");
                log.flush().expect("flush");
            }
            assert!(
                tokio::time::timeout(Duration::from_millis(300), watch.fd.readable())
                    .await
                    .is_err(),
                "writes to an open neighbour queued inotify events"
            );
        }
        // Its close is one event, dropped by name.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.changed())
                .await
                .is_err()
        );
        std::fs::write(&path, "b").expect("write in place");
        assert!(woke(&watch).await, "a write in place");
        let tmp = dir.path().join("gateway.toml.tmp");
        std::fs::write(&tmp, "c").expect("write");
        std::fs::rename(&tmp, &path).expect("rename over");
        assert!(woke(&watch).await, "a rename over the file");
        // A ConfigMap-style swap: the file is a link through `..data`, which is replaced.
        std::fs::create_dir(dir.path().join("v2")).expect("mkdir");
        std::os::unix::fs::symlink("v2", dir.path().join("..data_tmp")).expect("link");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
        assert!(woke(&watch).await, "a symlink swap in the folder");
    }
}
