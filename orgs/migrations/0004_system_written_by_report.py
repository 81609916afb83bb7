"""The identical-report shortcut (issue 17): each hypervisor remembers which report last wrote
it; not indexed, so check-in time updates stay HOT."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('orgs', '0003_system_fillfactor'),
    ]

    operations = [
        migrations.AddField(
            model_name='system',
            name='written_by_report',
            field=models.BigIntegerField(blank=True, editable=False, help_text='Id of the virt-who report that last wrote this hypervisor and its guest list; cleared when anything else writes them (the identical-report shortcut).', null=True),
        ),
    ]
