"""The 5 Hz LM, the acestep backend's planner (``AceStepLmPlanner``). Importing this package needs
only the default install; transformers is imported when an LM is built."""
