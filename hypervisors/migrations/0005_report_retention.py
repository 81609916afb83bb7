"""Retention and the identical-report shortcut (issues 8 and 17): a report counts the
hypervisors it wrote; a row answering identical reports points at the applied one; identical
reports and heartbeats update a row instead of adding one. Heartbeats stored before this
migration keep their time as ``last_heartbeat``."""

import django.db.models.deletion
from django.db import migrations, models


def heartbeat_times(apps, schema_editor):
    Report = apps.get_model("hypervisors", "Report")
    Report.objects.filter(kind="heartbeat", last_heartbeat__isnull=True).update(
        last_heartbeat=models.F("created"))


class Migration(migrations.Migration):

    dependencies = [
        ('hypervisors', '0004_fewer_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='report',
            name='last_heartbeat',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='report',
            name='last_seen',
            field=models.DateTimeField(blank=True, help_text='the last of those repeats', null=True),
        ),
        migrations.AddField(
            model_name='report',
            name='repeats',
            field=models.PositiveIntegerField(default=0, help_text='identical reports and heartbeats answered by this row after the first'),
        ),
        migrations.AddField(
            model_name='report',
            name='same_as',
            field=models.ForeignKey(blank=True, help_text='the applied report this one repeats', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='hypervisors.report'),
        ),
        migrations.AddField(
            model_name='report',
            name='written',
            field=models.PositiveIntegerField(blank=True, help_text='hypervisors this report wrote', null=True),
        ),
        migrations.AlterField(
            model_name='report',
            name='error',
            field=models.TextField(blank=True, help_text='Internal error text (operators only; clients see a generic message with its log reference)'),
        ),
        migrations.AddIndex(
            model_name='report',
            index=models.Index(condition=models.Q(('payload__isnull', False)), fields=['finished'], name='report_payload_finished_idx'),
        ),
        migrations.RunPython(heartbeat_times, migrations.RunPython.noop),
    ]
