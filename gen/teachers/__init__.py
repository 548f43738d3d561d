"""Teachers: the clients for the models gen asks for completions (the simulator is gen.sim)."""
