"""diffbench's built-in plugins, installed as ``diffbench_plugins`` and registered through
the ``diffbench`` entry-point group exactly like third-party plugins."""
