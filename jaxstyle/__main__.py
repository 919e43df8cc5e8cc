"""``python -m jaxstyle``: the `jaxstyle` command, for an environment where it is not installed as a script."""

from jaxstyle.cli import console_main

console_main()
