"""The HTTP edge of the metering gateway (Starlette). Thin: parse, call one
`metering` function, render."""
