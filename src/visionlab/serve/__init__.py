"""``visionlab serve``: trained models behind an HTTP API and a camera/upload page.

Needs the ``serve`` extra (``pip install "visionlab[serve]"``): FastAPI, uvicorn and
python-multipart. Nothing here is imported by ``import visionlab`` or ``visionlab --help``.
"""
