"""The dashboard's URLs (namespace ``dashboard``): login (throttled), sessions, a session's live page and
its fragments, curation, controls, STAR downloads, exposures, their pictures (every step's) and the scripts."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from emlive.web.dashboard import tilt_series, views
from emlive.web.dashboard.login import LoginView

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("dashboard/", views.sessions, name="sessions"),
    path("dashboard/sessions-table/", views.sessions_table, name="sessions_table"),
    path("dashboard/sessions/<int:session_id>/", views.session_page, name="session"),
    path("dashboard/sessions/<int:session_id>/status/", views.session_status, name="session_status"),
    path("dashboard/sessions/<int:session_id>/plots/", views.session_plots, name="session_plots"),
    path("dashboard/sessions/<int:session_id>/exposures/", views.session_exposures, name="session_exposures"),
    path("dashboard/sessions/<int:session_id>/curation/", views.set_curation, name="curation"),
    path("dashboard/sessions/<int:session_id>/stop/", views.control_session, {"action": "stop"}, name="stop"),
    path("dashboard/sessions/<int:session_id>/resume/", views.control_session, {"action": "resume"}, name="resume"),
    path("dashboard/sessions/<int:session_id>/exports/<str:name>", views.download_export, name="export"),
    path("dashboard/exposures/<int:exposure_id>/", views.exposure_page, name="exposure"),
    path("dashboard/exposures/<int:exposure_id>/thumbnail.png", views.thumbnail, name="thumbnail"),
    path("dashboard/exposures/<int:exposure_id>/spectrum.png", views.spectrum, name="spectrum"),
    path(
        "dashboard/exposures/<int:exposure_id>/step/<slug:step>/<slug:field>.png", views.step_picture, name="step_picture"
    ),
    path("dashboard/sessions/<int:session_id>/tilt-series/", tilt_series.session_tilt_series, name="session_tilt_series"),
    path("dashboard/tilt-series/<int:series_id>/", tilt_series.tilt_series_page, name="tilt_series"),
    path("dashboard/tilt-series/<int:series_id>/<slug:part>/", tilt_series.tilt_series_part, name="tilt_series_part"),
    path("static/emlive/<str:name>", views.static_file, name="static"),
]
