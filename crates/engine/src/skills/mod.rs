//! Skills: the code for one architecture family each.
pub mod bert;
pub mod llama;
