//! `sysctlbyname` on macOS, declared directly so no extra crate is needed.

use std::ffi::{CString, c_char, c_int, c_void};

unsafe extern "C" {
    fn sysctlbyname(
        name: *const c_char,
        oldp: *mut c_void,
        oldlenp: *mut usize,
        newp: *mut c_void,
        newlen: usize,
    ) -> c_int;
}

/// A string sysctl such as `machdep.cpu.brand_string`.
pub(crate) fn sysctl_string(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    let mut length: usize = 0;
    // SAFETY: a null output buffer asks only for the value's length.
    let code = unsafe {
        sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut length,
            std::ptr::null_mut(),
            0,
        )
    };
    if code != 0 || length == 0 {
        return None;
    }
    let mut buffer = vec![0u8; length];
    // SAFETY: `buffer` holds `length` bytes, as `length` tells the kernel.
    let code = unsafe {
        sysctlbyname(
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut length,
            std::ptr::null_mut(),
            0,
        )
    };
    if code != 0 {
        return None;
    }
    buffer.truncate(length);
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(buffer.len());
    let text = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// An integer sysctl such as `hw.memsize`; those are 4 or 8 bytes wide
/// depending on the key.
pub(crate) fn sysctl_u64(name: &str) -> Option<u64> {
    let name = CString::new(name).ok()?;
    let mut buffer = [0u8; 8];
    let mut length = buffer.len();
    // SAFETY: `buffer` holds `length` bytes.
    let code = unsafe {
        sysctlbyname(
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut length,
            std::ptr::null_mut(),
            0,
        )
    };
    if code != 0 {
        return None;
    }
    match length {
        4 => Some(u64::from(u32::from_ne_bytes([
            buffer[0], buffer[1], buffer[2], buffer[3],
        ]))),
        8 => Some(u64::from_ne_bytes(buffer)),
        _ => None,
    }
}
