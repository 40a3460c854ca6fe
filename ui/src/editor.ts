// The PromQL editor: CodeMirror 6 with @prometheus-io/codemirror-promql, completing metric
// names, labels and functions from this server's own API.
import { autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap } from '@codemirror/autocomplete';
import { defaultKeymap, history, historyKeymap, insertNewlineAndIndent } from '@codemirror/commands';
import { bracketMatching, HighlightStyle, syntaxHighlighting } from '@codemirror/language';
import { EditorState, Prec } from '@codemirror/state';
import { EditorView, keymap, placeholder } from '@codemirror/view';
import { tags } from '@lezer/highlight';
import { PromQLExtension } from '@prometheus-io/codemirror-promql';

const highlight = HighlightStyle.define([
  { tag: tags.number, color: '#09885a' },
  { tag: tags.string, color: '#a31515' },
  { tag: tags.keyword, color: '#008080', fontWeight: 'bold' },
  { tag: tags.function(tags.variableName), color: '#008080' },
  { tag: tags.labelName, color: '#800000' },
  { tag: tags.operator, color: '#af00db' },
  { tag: tags.modifier, color: '#af00db' },
  { tag: tags.paren, color: '#555' },
  { tag: tags.squareBracket, color: '#555' },
  { tag: tags.brace, color: '#555' },
  { tag: tags.invalid, color: 'red' },
  { tag: tags.comment, color: '#888', fontStyle: 'italic' },
]);

/** An editor in `parent` holding `doc`; Enter runs `onRun` (Shift+Enter: new line). */
export function createEditor(parent: HTMLElement, doc: string, onRun: () => void): EditorView {
  const promql = new PromQLExtension()
    .activateCompletion(true)
    .activateLinter(false)
    .setComplete({ remote: { url: '', httpMethod: 'GET' } });
  return new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        history(),
        closeBrackets(),
        bracketMatching(),
        autocompletion({ activateOnTyping: true }),
        syntaxHighlighting(highlight),
        placeholder('Expression (press Shift+Enter for newlines)'),
        promql.asExtension(),
        Prec.high(
          keymap.of([
            { key: 'Enter', run: () => (onRun(), true) },
            { key: 'Shift-Enter', run: insertNewlineAndIndent },
          ]),
        ),
        keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap, ...completionKeymap]),
        EditorView.lineWrapping,
        EditorView.contentAttributes.of({ 'aria-label': 'PromQL expression', spellcheck: 'false' }),
      ],
    }),
  });
}
