"""Running external programs (RELION, MotionCor2/3, ctffind 4/5, gctf, topaz) as binaries or containers.

- :mod:`emlive.tools.spec`: per-tool configuration (:class:`ToolSpec`, the ``[tools]``
  settings), versions, and the pure container wrapping (:func:`container_argv`);
- :mod:`emlive.tools.call`: the one :func:`call` (argv lists only, a timeout that kills the
  process group, :class:`ToolError` with the exit code and stderr tail), :func:`run_tool`
  (wrapping, environment, GPU) and :func:`detect_version`;
- :mod:`emlive.tools.engine`: a program as the engine of a step (:class:`ExternalTool`) and the
  glue around one run (:class:`ToolRun`: version check, work folder, missing outputs, parse errors).
"""

from emlive.tools.call import (
    Completed,
    ToolError,
    ToolNotFoundError,
    ToolOutputError,
    ToolTimeoutError,
    ToolVersionError,
    assigned_gpu,
    call,
    check_version,
    configure_tools,
    detect_version,
    run_tool,
    tail,
    tool_spec,
)
from emlive.tools.engine import ExternalTool, ToolRun
from emlive.tools.spec import (
    TOOL_NAMES,
    ToolSpec,
    ToolsSettings,
    Version,
    container_argv,
    container_cleanup_argv,
    find_version,
)

__all__ = [
    "TOOL_NAMES",
    "Completed",
    "ExternalTool",
    "ToolError",
    "ToolNotFoundError",
    "ToolOutputError",
    "ToolRun",
    "ToolSpec",
    "ToolTimeoutError",
    "ToolVersionError",
    "ToolsSettings",
    "Version",
    "assigned_gpu",
    "call",
    "check_version",
    "configure_tools",
    "container_argv",
    "container_cleanup_argv",
    "detect_version",
    "find_version",
    "run_tool",
    "tail",
    "tool_spec",
]
