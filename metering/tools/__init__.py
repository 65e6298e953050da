"""The operator's command line, `python -m metering <command>`: each command
is a module with `add_arguments(parser)` and `async def run(args, settings)`.
May import every other layer; nothing imports it but `metering.__main__`.
"""
