//! Lock helpers. A panic while a lock is held (a failed assertion in a test
//! thread, say) must not stop the kubelet from stopping containers and
//! removing cgroups afterwards, so a poisoned lock is used as it is: what these
//! locks guard are plain collections that no half-finished section can break.

#![forbid(unsafe_code)]

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
