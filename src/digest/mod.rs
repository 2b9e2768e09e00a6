//! The digest stage: which comparisons an issue holds ([`window`]) and the issue rendered
//! once, as HTML and text with a slot for each reader's unsubscribe link ([`render`]).

pub mod render;
pub mod window;

pub use window::*;
