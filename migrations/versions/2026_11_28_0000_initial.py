"""initial schema: tokens, files, suites, jobs (+events, transitions), leases, model versions, aliases, scores

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 22:10:45.757475

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('api_token',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('revoked_at', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_token_token_sha256'))
    )
    op.create_table('lease',
    sa.Column('key', sa.String(length=120), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('acquired_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_lease'))
    )
    op.create_table('model_version',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('description', sa.String(length=2000), nullable=True),
    sa.Column('parent_id', sa.String(length=40), nullable=True),
    sa.Column('base_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=True),
    sa.Column('skill', sa.String(length=100), nullable=True),
    sa.Column('checkpoint_uri', sa.String(length=1024), nullable=False),
    sa.Column('checkpoint_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('gate_report', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['base_id'], ['model_version.id'], name=op.f('fk_model_version_base_id_model_version')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_version.id'], name=op.f('fk_model_version_parent_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('base_id', 'number', name=op.f('uq_model_version_base_id_number')),
    sa.UniqueConstraint('job_id', 'skill', name=op.f('uq_model_version_job_id_skill'))
    )
    op.create_index(op.f('ix_model_version_checkpoint_sha256'), 'model_version', ['checkpoint_sha256'], unique=False)
    op.create_index(op.f('ix_model_version_parent_id'), 'model_version', ['parent_id'], unique=False)
    op.create_table('alias',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('model_version_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_alias_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_alias'))
    )
    op.create_table('job',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner_token_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('base_version_id', sa.String(length=40), nullable=False),
    sa.Column('request', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('current_stage', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('total_steps', sa.Integer(), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('candidate_version_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.Integer(), nullable=False),
    sa.Column('status_changed_at', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.Integer(), nullable=True),
    sa.Column('finished_at', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['base_version_id'], ['model_version.id'], name=op.f('fk_job_base_version_id_model_version')),
    sa.ForeignKeyConstraint(['owner_token_id'], ['api_token.id'], name=op.f('fk_job_owner_token_id_api_token')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job')),
    sa.UniqueConstraint('owner_token_id', 'idempotency_key', name=op.f('uq_job_owner_token_id_idempotency_key'))
    )
    op.create_index(op.f('ix_job_status'), 'job', ['status'], unique=False)
    # model_version.job_id -> job.id closes a cycle (job.base_version_id -> model_version.id), so it is
    # added once both tables exist; batch mode lets SQLite do it by copying the (empty) table.
    with op.batch_alter_table("model_version") as batch:
        batch.create_foreign_key(op.f("fk_model_version_job_id_job"), "job", ["job_id"], ["id"])
    op.create_table('uploaded_file',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('storage_uri', sa.String(length=1024), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('preflight', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['api_token.id'], name=op.f('fk_uploaded_file_created_by_api_token')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_uploaded_file'))
    )
    op.create_table('alias_history',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('alias_name', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_version_id', sa.String(length=40), nullable=True),
    sa.Column('to_version_id', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=True),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['alias_name'], ['alias.name'], name=op.f('fk_alias_history_alias_name_alias')),
    sa.ForeignKeyConstraint(['from_version_id'], ['model_version.id'], name=op.f('fk_alias_history_from_version_id_model_version')),
    sa.ForeignKeyConstraint(['to_version_id'], ['model_version.id'], name=op.f('fk_alias_history_to_version_id_model_version')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_alias_history')),
    sa.UniqueConstraint('id', name=op.f('uq_alias_history_id'))
    )
    op.create_index(op.f('ix_alias_history_alias_name'), 'alias_history', ['alias_name'], unique=False)
    op.create_table('job_event',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('message', sa.String(length=4000), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_job_event_job_id_job')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_job_event')),
    sa.UniqueConstraint('id', name=op.f('uq_job_event_id'))
    )
    op.create_index(op.f('ix_job_event_job_id'), 'job_event', ['job_id'], unique=False)
    op.create_table('job_transition',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=False),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('seconds_in_from', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_job_transition_job_id_job')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_job_transition'))
    )
    op.create_index(op.f('ix_job_transition_job_id'), 'job_transition', ['job_id'], unique=False)
    op.create_table('suite',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('file_id', sa.String(length=40), nullable=False),
    sa.Column('grader', sa.String(length=32), nullable=False),
    sa.Column('tolerance', sa.Double(), nullable=False),
    sa.Column('min_score', sa.Double(), nullable=True),
    sa.Column('grader_options', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('decoding', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('suite_sha256', sa.String(length=64), nullable=False),
    sa.Column('num_items', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['api_token.id'], name=op.f('fk_suite_created_by_api_token')),
    sa.ForeignKeyConstraint(['file_id'], ['uploaded_file.id'], name=op.f('fk_suite_file_id_uploaded_file')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_suite')),
    sa.UniqueConstraint('name', name=op.f('uq_suite_name'))
    )
    op.create_table('score',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_version_id', sa.String(length=40), nullable=False),
    sa.Column('checkpoint_sha256', sa.String(length=64), nullable=False),
    sa.Column('suite_id', sa.String(length=40), nullable=True),
    sa.Column('suite_sha256', sa.String(length=64), nullable=False),
    sa.Column('decoding_hash', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('ci_low', sa.Double(), nullable=True),
    sa.Column('ci_high', sa.Double(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('per_item', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_score_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['suite_id'], ['suite.id'], name=op.f('fk_score_suite_id_suite')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_score')),
    sa.UniqueConstraint('model_version_id', 'suite_sha256', 'decoding_hash', name=op.f('uq_score_model_version_id_suite_sha256_decoding_hash'))
    )
    op.create_index('ix_score_checkpoint_lookup', 'score', ['checkpoint_sha256', 'suite_sha256', 'decoding_hash'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("model_version") as batch:
        batch.drop_constraint(op.f("fk_model_version_job_id_job"), type_="foreignkey")
    op.drop_index('ix_score_checkpoint_lookup', table_name='score')
    op.drop_table('score')
    op.drop_table('suite')
    op.drop_index(op.f('ix_job_transition_job_id'), table_name='job_transition')
    op.drop_table('job_transition')
    op.drop_index(op.f('ix_job_event_job_id'), table_name='job_event')
    op.drop_table('job_event')
    op.drop_index(op.f('ix_alias_history_alias_name'), table_name='alias_history')
    op.drop_table('alias_history')
    op.drop_table('uploaded_file')
    op.drop_index(op.f('ix_job_status'), table_name='job')
    op.drop_table('job')
    op.drop_table('alias')
    op.drop_index(op.f('ix_model_version_parent_id'), table_name='model_version')
    op.drop_index(op.f('ix_model_version_checkpoint_sha256'), table_name='model_version')
    op.drop_table('model_version')
    op.drop_table('lease')
    op.drop_table('api_token')
