//! The one place that runs `bindgen!` over `wit/`. Generated code stays in
//! here; the rest of the gateway uses the re-exports.

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter-plugin",
        // Only the imports that wait on the network are async: a plain
        // host call (a header, the config, a counter) then costs a direct
        // call instead of a future polled on the guest's fiber.
        imports: {
            "transom:plugin/upstream.call": async | trappable,
            "transom:plugin/upstream.call-batch": async | trappable,
            "transom:plugin/tokens.verify-jwt": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub use generated::FilterPlugin;
pub use generated::FilterPluginPre;
pub use generated::exports::transom::plugin::filter::{Answer, Decision, PhaseFlags as Phases};
pub use generated::transom::plugin::counters::{Bucket, Counter, Host as CountersApi, Limit};
pub use generated::transom::plugin::host::{Host as HostServices, Level};
pub use generated::transom::plugin::metrics::Host as MetricsApi;
pub use generated::transom::plugin::request::Host as RequestApi;
pub use generated::transom::plugin::response::Host as ResponseApi;
pub use generated::transom::plugin::tokens::{Host as TokensApi, TokenError};
pub use generated::transom::plugin::upstream::{
    CallError, Host as UpstreamApi, Incoming, Outgoing,
};

/// Add the gateway's imports to a linker.
pub fn add_to_linker<T>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut T,
) -> wasmtime::Result<()>
where
    T: RequestApi
        + ResponseApi
        + HostServices
        + UpstreamApi
        + CountersApi
        + TokensApi
        + MetricsApi
        + Send
        + 'static,
{
    use generated::transom::plugin as p;
    use wasmtime::component::HasSelf;
    p::request::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::response::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::host::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::upstream::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::counters::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::tokens::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    p::metrics::add_to_linker::<T, HasSelf<T>>(linker, get)?;
    Ok(())
}
