"""Errors the engine raises on purpose.

Every error a user can cause (a bad file, a wrong model, a cancelled run) is an :class:`XAIError`
whose message is one complete sentence fit to show as it is: the command line prints it on one line
and exits with code 2, the Slicer modules show it in a message box.
"""

__all__ = ["XAIError", "XAIInputError", "XAIModelError", "XAICancelled"]


class XAIError(Exception):
    """Base class of the errors the user can act on."""


class XAIInputError(XAIError):
    """The input image (or an argument about it) cannot be used."""


class XAIModelError(XAIError):
    """The model cannot be loaded safely, or does not fit the image or the task."""


class XAICancelled(XAIError):
    """The user cancelled a long run; nothing was kept."""
