//! RDMA devices through libibverbs (`rdma-sys`): which exist, and the clear error when the
//! one a config names does not.

use std::ffi::CStr;

/// The names of the RDMA devices libibverbs reports (empty without a NIC or a software
/// RDMA provider such as rxe).
pub fn device_names() -> Vec<String> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count into `n` and returns a list (or null)
    // that stays valid until ibv_free_device_list.
    let list = unsafe { rdma_sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Vec::new();
    }
    let names = (0..n.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: `i` < `n` entries of the list are valid device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: a valid device has a NUL-terminated name owned by the list.
            let name = unsafe { rdma_sys::ibv_get_device_name(dev) };
            (!name.is_null())
                // SAFETY: checked non-null; valid while the list is.
                .then(|| {
                    unsafe { CStr::from_ptr(name) }
                        .to_string_lossy()
                        .into_owned()
                })
        })
        .collect();
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { rdma_sys::ibv_free_device_list(list) };
    names
}

/// Checks that `wanted` exists; the error names what does.
pub fn find(wanted: &str) -> Result<(), String> {
    let names = device_names();
    if names.is_empty() {
        return Err(format!(
            "no RDMA device found for `{wanted}` (ibv_get_device_list returned none): this \
             machine has no InfiniBand/RoCE NIC or its driver is not loaded; device = \
             \"emulated\" runs a whole cluster inside one process on hw-sim's emulated verbs"
        ));
    }
    if !names.iter().any(|n| n == wanted) {
        return Err(format!(
            "RDMA device `{wanted}` not found; devices here: {}",
            names.join(", ")
        ));
    }
    Ok(())
}
