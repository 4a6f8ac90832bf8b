//! The one place that runs `bindgen!` over `wit/`. Generated code stays in
//! here; the rest of the gateway uses the re-exports.

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub use generated::FilterPlugin;
pub use generated::FilterPluginPre;
pub use generated::exports::transom::plugin::filter::{Answer, Decision, PhaseFlags as Phases};
pub use generated::transom::plugin::host::{Host as HostServices, Level};
pub use generated::transom::plugin::request::Host as RequestApi;
pub use generated::transom::plugin::response::Host as ResponseApi;

/// Add the gateway's imports to a linker.
pub fn add_to_linker<T>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut T,
) -> wasmtime::Result<()>
where
    T: RequestApi + ResponseApi + HostServices + Send + 'static,
{
    generated::transom::plugin::request::add_to_linker::<T, wasmtime::component::HasSelf<T>>(
        linker, get,
    )?;
    generated::transom::plugin::response::add_to_linker::<T, wasmtime::component::HasSelf<T>>(
        linker, get,
    )?;
    generated::transom::plugin::host::add_to_linker::<T, wasmtime::component::HasSelf<T>>(
        linker, get,
    )?;
    Ok(())
}
