-- Task names (issue #12, the `orrery` command line): a stable, human name that tasks-as-code files use to
-- find the task they define. Optional; unique per owner among the tasks that exist (a deleted task frees its
-- name). The API validates the same rule and answers 409 naming the existing task.
ALTER TABLE task ADD COLUMN name text
    CHECK (name IS NULL OR name ~ '^[A-Za-z0-9._-]{1,100}$');
CREATE UNIQUE INDEX task_owner_name ON task (created_by, name) WHERE name IS NOT NULL;
