"""Teachers: the models gen asks for completions, and the simulator that stands in for them."""
