"""The client's errors, with upstream's names."""


class QCGPJMAError(Exception):
    """Base class of the client API errors."""


class InternalError(QCGPJMAError):
    pass


class InvalidJobDescriptionError(QCGPJMAError):
    pass


class JobNotDefinedError(QCGPJMAError):
    pass


class ConnectionError(QCGPJMAError):  # noqa: A001 - upstream's name
    """The service did not answer, or answered with an error (`Request failed - <message>`)."""


class WrongArgumentsError(QCGPJMAError):
    pass


class FileError(QCGPJMAError):
    pass


class ServiceError(QCGPJMAError):
    pass


class TimeoutElapsed(Exception):
    pass
