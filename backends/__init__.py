"""Built-in backend plugins; each subpackage registers itself through an entry point."""
