//! Tool definition pinning (see the module docs of [`super`]).
