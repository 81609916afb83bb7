import os

from django.core.wsgi import get_wsgi_application

from sam import beat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
application = get_wsgi_application()
# The embedded default has no `celery beat`: the process serving this application runs the
# periodic tasks (one process per installation; see sam/beat.py and SAM_BEAT_IN_PROCESS).
beat.start_in_background()
